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
    """Every event names its IKE SA, and (filled in by the SA that emits it, so a consumer can log
    a failure even after the SA is gone) the connection, the peer's address and our role."""

    ike_spi_i: bytes
    ike_spi_r: bytes
    conn: str = field(default="", kw_only=True)  # the IkeSaConfig name
    peer: Addr = field(default=("", 0), kw_only=True)  # the peer's IKE address
    initiator: bool = field(default=False, kw_only=True)  # our role in this IKE SA

    @property
    def role(self) -> str:
        return "initiator" if self.initiator else "responder"


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
    proposal: str = ""  # the new IKE SA's proposal, e.g. "aes256-sha256-prfsha256-modp2048"


@dataclass(frozen=True)
class IkeSaRekeyFailed(Event):
    """Our IKE SA rekey was refused (the old SA stays up and retries; its hard lifetime still ends it)."""

    notify: int = 0
    detail: str = ""


@dataclass(frozen=True)
class IkeSaDeleted(Event):
    reason: str  # "local" "remote" "dpd" "timeout" "auth_failed" "no_proposal" "rekeyed" "failed" ...
    notify: int = 0  # the error notify that ended it, if any
    # why, in words (the core's own reason text: "PSK mismatch: ...", "peer identity X is not the
    # configured Y", "certificate: ...", both proposal lists...); never key material
    detail: str = ""


@dataclass(frozen=True)
class IkeSaRefused(Event):
    """As responder we refused an IKE_SA_INIT request (no IKE SA ever existed): ``notify`` is what we
    answered (NO_PROPOSAL_CHOSEN...), ``ours``/``theirs`` the two proposal lists."""

    notify: int = 0
    detail: str = ""
    ours: tuple[str, ...] = ()
    theirs: tuple[str, ...] = ()


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
    """A Child SA could not be negotiated (the IKE SA stays up).  ``requested``: we sent the request
    (the peer refused it) or we refused the peer's; ``ours``/``theirs``: the ESP proposal lists
    (``theirs`` only known when we answered)."""

    notify: int = 0
    reason: str = ""
    requested: bool = False
    ours: tuple[str, ...] = ()
    theirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class NatDetected(Event):
    local_behind_nat: bool
    remote_behind_nat: bool


@dataclass(frozen=True)
class PeerAddressChanged(Event):
    """The NATed peer now talks from ``remote`` (NAT rebinding): send IKE and ESP there."""

    local: Addr = ("", 0)
    remote: Addr = ("", 0)
