"""What one IKE SA needs to know (the core's own view of a connection).

``ipsecemu.config.connection`` (YAML / Azure policies) builds these; tests build them with
``IkeSaConfig.simple(...)`` from strongSwan-style strings.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from .certs import CertAuth, cert_identities, dn_to_str
from .consts import IdType
from .errors import LocalProtocolError
from .proposals import Proposal, parse_proposals
from .ts import TrafficSelector

CHILDLESS = ("never", "allow", "force")

_DN_START = re.compile(r"^\s*[A-Za-z][A-Za-z0-9.]*\s*=")


# ID prefixes (case-insensitive) and the names used in config files and messages
_ID_PREFIX = {"fqdn": IdType.FQDN, "ipv4": IdType.IPV4_ADDR, "ipv6": IdType.IPV6_ADDR, "rfc822": IdType.RFC822_ADDR,
              "email": IdType.RFC822_ADDR, "keyid": IdType.KEY_ID, "key_id": IdType.KEY_ID, "dn": IdType.DER_ASN1_DN}
ID_NAMES: dict[int, str] = {IdType.FQDN: "fqdn", IdType.IPV4_ADDR: "ipv4", IdType.IPV6_ADDR: "ipv6", IdType.RFC822_ADDR: "rfc822",
            IdType.KEY_ID: "key_id", IdType.DER_ASN1_DN: "dn"}
_FQDN = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Identity:
    """An IKEv2 identity (RFC 7296 §3.5) as sent in IDi/IDr: the one class for the core and the
    config files alike; :meth:`parse` is the one parser of its text forms."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan-like: ``10.0.0.1`` / ``fd00::1`` (IP), ``@host`` or ``host`` (FQDN),
        ``user@host`` (RFC822), ``@#0a0b`` or ``#0a0b`` (KEY_ID, hex), or an explicit
        ``fqdn:``/``email:``/``rfc822:``/``keyid:``/``key_id:``/``ipv4:``/``ipv6:`` prefix (any case);
        ``C=CH, O=Org, CN=host`` or ``dn:...`` is a distinguished name (ID_DER_ASN1_DN, attributes in
        the order given, as strongSwan reads it).  A malformed value is a :class:`LocalProtocolError`."""
        s = text.strip()
        if not s:
            raise LocalProtocolError("identity must not be empty")
        prefix, sep, rest = s.partition(":")
        kind = _ID_PREFIX.get(prefix.lower()) if sep else None
        if kind is None and _DN_START.match(s) and "@" not in s.split("=", 1)[0]:
            kind, rest = IdType.DER_ASN1_DN, s
        if kind is None:
            if s.startswith(("@#", "#")):
                kind, rest = IdType.KEY_ID, s.lstrip("@")[1:]
            elif s.startswith("@"):
                kind, rest = IdType.FQDN, s[1:]
            else:
                try:
                    addr = ipaddress.ip_address(s)
                    return cls(IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR, addr.packed)
                except ValueError:
                    kind, rest = (IdType.RFC822_ADDR if "@" in s else IdType.FQDN), s
        rest = rest.strip()
        name = ID_NAMES[kind]
        if not rest:
            raise LocalProtocolError(f"{name} identity without a value")
        if kind == IdType.DER_ASN1_DN:
            return cls(kind, _dn_der(rest))
        if kind in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                addr = ipaddress.ip_address(rest)
            except ValueError:
                raise LocalProtocolError(f"not an IP address: {rest!r}") from None
            if ID_NAMES[IdType.IPV4_ADDR if addr.version == 4 else IdType.IPV6_ADDR] != name:
                raise LocalProtocolError(f"{rest} is not an {name} address")
        elif kind == IdType.KEY_ID:
            rest = rest.replace(":", "")
            if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", rest):
                raise LocalProtocolError(f"key_id must be hex, got {rest!r}")
        elif kind == IdType.RFC822_ADDR and "@" not in rest:
            raise LocalProtocolError(f"rfc822 identity needs user@domain, got {rest!r}")
        elif kind == IdType.FQDN and not _FQDN.fullmatch(rest):
            raise LocalProtocolError(f"not a valid FQDN: {rest!r}")
        return cls.of(kind, rest)

    @property
    def type(self) -> str:
        """``fqdn``, ``ipv4``, ``ipv6``, ``rfc822``, ``key_id`` or ``dn`` (the config files' names)."""
        return ID_NAMES.get(self.id_type, str(self.id_type))

    @property
    def type_id(self) -> int:
        return int(self.id_type)

    @property
    def value(self) -> str:
        """The identity's text without a type prefix (key IDs as lower-case hex)."""
        if self.id_type == IdType.KEY_ID:
            return self.data.hex()
        return str(self)

    def spec(self) -> str:
        """``type:value``: the unambiguous text :meth:`parse` reads back (what config files store)."""
        return f"{self.type}:{self.value}"

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

    def matches(self, other: Identity) -> bool:
        """Equal, or the same distinguished name in another string encoding."""
        if self == other:
            return True
        if self.id_type == other.id_type == IdType.DER_ASN1_DN:
            return dn_to_str(self.data) == dn_to_str(other.data)
        return False

    def __str__(self) -> str:
        if self.id_type == IdType.DER_ASN1_DN:
            return dn_to_str(self.data)
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type == IdType.KEY_ID:
            return "@#" + self.data.hex()
        return self.data.decode("utf-8", "replace")


def _dn_der(text: str) -> bytes:
    """DER of a "C=CH, O=Org, CN=host" distinguished name (one attribute per RDN, in order)."""
    oids = {"CN": NameOID.COMMON_NAME, "C": NameOID.COUNTRY_NAME, "L": NameOID.LOCALITY_NAME,
            "ST": NameOID.STATE_OR_PROVINCE_NAME, "O": NameOID.ORGANIZATION_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "E": NameOID.EMAIL_ADDRESS,
            "SERIALNUMBER": NameOID.SERIAL_NUMBER}
    rdns = []
    for part in (p.strip() for p in re.split(r"(?<!\\)[,/]", text) if p.strip()):
        key, sep, value = part.partition("=")
        oid = oids.get(key.strip().upper())
        if not sep or oid is None or not value.strip():
            raise LocalProtocolError(f"distinguished name {text!r}: cannot read {part!r}")
        try:
            rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value.strip().replace("\\,", ","))]))
        except ValueError as exc:
            raise LocalProtocolError(f"distinguished name {text!r}: {exc}") from None
    return x509.Name(rdns).public_bytes()


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
    ike_rekey_fraction: float | None = None  # the IKE SA's own (None: rekey_fraction)
    # timed rekeys start up to this many seconds earlier, at random, so both peers rarely rekey
    # together (strongSwan's rand_time); None: 10 % of the lifetime
    child_jitter_s: float | None = None
    ike_jitter_s: float | None = None
    dpd_delay_s: float = 0.0  # 0: no automatic DPD
    retransmit_timeout_s: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    half_open_timeout_s: float = 30.0
    replay_window: int = 128
    force_encap: bool = False  # send a fake NAT-D source hash so both sides use UDP 4500
    initial_contact: bool = True
    dpd_timeout_s: float = 0.0  # a DPD exchange unanswered this long closes the SA (Azure: 45); 0: retransmits decide
    keepalive_s: float = 20.0  # NAT keepalives on UDP 4500 while idle, sent by the gateway; 0: off
    child_kilobytes: int = 0  # volume limits of each Child SA in the data plane (0: none)
    child_packets: int = 0
    certs: CertAuth | None = None  # certificate authentication instead of the PSK
    fragmentation: bool = True  # RFC 7383: offer/accept IKE fragmentation
    fragment_size: int = 1280  # largest IP datagram for an IKE message before it is fragmented
    # RFC 6023 childless IKE SAs, like strongSwan's ``childless``: "never" (neither offered nor
    # accepted), "allow" (offered and accepted; the first Child SA still rides in IKE_AUTH unless
    # initiate(child=False)), "force" (IKE_AUTH without a Child SA, then CREATE_CHILD_SA)
    childless: str = "allow"

    def __post_init__(self) -> None:
        if self.childless not in CHILDLESS:
            raise LocalProtocolError(f"{self.name}: childless must be one of {', '.join(CHILDLESS)}, "
                                     f"got {self.childless!r}")
        if self.certs is not None:
            if not any(Identity(t, d).matches(self.local_id) for t, d in cert_identities(self.certs.cert)):
                raise LocalProtocolError(f"{self.name}: local identity {self.local_id} is neither the subject "
                                         "nor a subjectAltName of our certificate")

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
        **kw: Any,  # any other IkeSaConfig field, passed through
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
            **kw,
        )
