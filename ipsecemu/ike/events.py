"""Events the IKE core emits (``IkeSa.next_event()`` / ``IkeEndpoint.next_event()``).

Child SA events carry ready-to-install data-plane configs (``EspSaConfig``), so a consumer does
``table.add(ev.keys.inbound)`` and ``EspOutbound(ev.keys.outbound)`` without knowing IKE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecemu.base.satypes import EspSaConfig

from .ts import TrafficSelector

Addr = tuple[str, int]


@dataclass(frozen=True)
class ChildSaKeys:
    inbound: EspSaConfig
    outbound: EspSaConfig
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    mode: str  # "tunnel" | "transport"
    encap: bool  # ESP in UDP (RFC 3948) because a NAT was detected (or forced)
    local: Addr  # outer addresses for the ESP packets (port 4500 when encap)
    remote: Addr
    lifetime_s: float  # hard lifetime; IKE rekeys before it
    proposal: str  # e.g. "aes256gcm16" (strongSwan notation)

    def __repr__(self) -> str:
        return (
            f"ChildSaKeys(in={self.inbound.spi:#010x}, out={self.outbound.spi:#010x}, {self.proposal}, "
            f"{[str(t) for t in self.local_ts]} <-> {[str(t) for t in self.remote_ts]}, <keys redacted>)"
        )


@dataclass(frozen=True)
class Event:
    ike_spi_i: bytes
    ike_spi_r: bytes


@dataclass(frozen=True)
class IkeSaEstablished(Event):
    local_id: str
    remote_id: str
    proposal: str  # e.g. "aes256-sha256-prfsha256-modp2048"
    local: Addr
    remote: Addr
    nat_local: bool  # we are behind a NAT
    nat_remote: bool  # the peer is behind a NAT (or faked it to force UDP encapsulation)


@dataclass(frozen=True)
class IkeSaRekeyed(Event):
    new_spi_i: bytes
    new_spi_r: bytes


@dataclass(frozen=True)
class IkeSaDeleted(Event):
    reason: str  # "local" "remote" "dpd" "timeout" "auth_failed" "no_proposal" "rekeyed" "failed" ...
    notify: int = 0  # the error notify that ended it, if any


@dataclass(frozen=True)
class ChildSaEstablished(Event):
    keys: ChildSaKeys


@dataclass(frozen=True)
class ChildSaRekeyed(Event):
    """The new SA is installed; the old one (``old_inbound_spi``/``old_outbound_spi``) is still
    valid until its ChildSaDeleted event (make-before-break)."""

    old_inbound_spi: int = 0
    old_outbound_spi: int = 0
    keys: ChildSaKeys = field(kw_only=True)  # after fields with defaults: by keyword


@dataclass(frozen=True)
class ChildSaDeleted(Event):
    inbound_spi: int = 0
    outbound_spi: int = 0
    reason: str = "local"


@dataclass(frozen=True)
class ChildSaFailed(Event):
    """A Child SA could not be negotiated (the IKE SA stays up)."""

    notify: int = 0
    reason: str = ""


@dataclass(frozen=True)
class NatDetected(Event):
    local_behind_nat: bool
    remote_behind_nat: bool


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    """The NATed peer now talks from ``remote`` (NAT rebinding): send IKE and ESP there."""

    local: Addr = ("", 0)
    remote: Addr = ("", 0)
