"""What one IKE SA needs to know (the core's own view of a connection).

``ipsecemu.ike.config`` (YAML / Azure policies) builds these; tests build them with
``IkeSaConfig.simple(...)`` from strongSwan-style strings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .consts import IdType
from .errors import LocalProtocolError
from .proposals import Proposal, parse_proposals
from .ts import TrafficSelector


@dataclass(frozen=True)
class Identity:
    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan-like: ``10.0.0.1`` / ``fd00::1`` (IP), ``@host`` or ``host`` (FQDN),
        ``user@host`` (RFC822), ``@#0a0b`` (KEY_ID, hex), or an explicit ``fqdn:``/``email:``/
        ``keyid:``/``ipv4:``/``ipv6:`` prefix."""
        prefixes = {"fqdn:": IdType.FQDN, "email:": IdType.RFC822_ADDR, "rfc822:": IdType.RFC822_ADDR,
                    "keyid:": IdType.KEY_ID, "ipv4:": IdType.IPV4_ADDR, "ipv6:": IdType.IPV6_ADDR}
        for p, t in prefixes.items():
            if text.startswith(p):
                return cls.of(t, text[len(p):])
        if text.startswith("@#"):
            return cls.of(IdType.KEY_ID, text[2:])
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:].encode())
        try:
            addr = ipaddress.ip_address(text)
            return cls(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)
        except ValueError:
            pass
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        if not text:
            raise LocalProtocolError("identity must not be empty")
        return cls(IdType.FQDN, text.encode())

    @classmethod
    def of(cls, id_type: int, value: str) -> Identity:
        try:
            if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
                addr = ipaddress.ip_address(value)
                if (addr.version == 4) != (id_type == IdType.IPV4_ADDR):
                    raise ValueError("address family does not match the ID type")
                return cls(id_type, addr.packed)
            if id_type == IdType.KEY_ID:
                return cls(id_type, bytes.fromhex(value))
        except ValueError as exc:
            raise LocalProtocolError(f"identity {value!r}: {exc}") from None
        return cls(id_type, value.encode())

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type == IdType.KEY_ID:
            return "@#" + self.data.hex()
        return self.data.decode("utf-8", "replace")


@dataclass
class IkeSaConfig:
    name: str
    psk: bytes
    local_id: Identity
    remote_id: Identity | None  # None: accept any identity the PSK authenticates
    ike_proposals: list[Proposal]
    esp_proposals: list[Proposal]
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    remote_addr: tuple[str, int] | None = None
    mode: str = "tunnel"
    ike_lifetime_s: float = 4 * 3600.0  # reauth/rekey horizon; we rekey at rekey fraction
    child_lifetime_s: float = 3600.0
    rekey_fraction: float = 0.9  # rekey at this fraction of the lifetime (0 disables timed rekey)
    dpd_delay_s: float = 0.0  # 0: no automatic DPD
    retransmit_timeout_s: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    half_open_timeout_s: float = 30.0
    replay_window: int = 128
    force_encap: bool = False  # send a fake NAT-D source hash so both sides use UDP 4500
    initial_contact: bool = True
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # the PSK never reaches a log
        return f"IkeSaConfig({self.name!r}, {self.local_id} -> {self.remote_id}, psk=<redacted>)"

    @classmethod
    def simple(
        cls,
        name: str,
        psk: bytes | str,
        local_id: str,
        remote_id: str | None,
        *,
        ike: str = "aes256-sha256-modp2048",
        esp: str = "aes256gcm16",
        local_ts: str = "0.0.0.0/0",
        remote_ts: str = "0.0.0.0/0",
        **kw: object,
    ) -> IkeSaConfig:
        return cls(
            name=name,
            psk=psk.encode() if isinstance(psk, str) else psk,
            local_id=Identity.parse(local_id),
            remote_id=Identity.parse(remote_id) if remote_id else None,
            ike_proposals=parse_proposals(ike, "ike"),
            esp_proposals=parse_proposals(esp, "esp"),
            local_ts=[TrafficSelector.from_cidr(c.strip()) for c in local_ts.split(",")],
            remote_ts=[TrafficSelector.from_cidr(c.strip()) for c in remote_ts.split(",")],
            **kw,  # type: ignore[arg-type]
        )
