"""Typed routing intent of one node: what it is (ASN, router-id), whom it talks BGP to, what it says to
each neighbour, and — for an Azure Virtual WAN hub — its hub routing preference.

The lab's YAML declares this intent; :mod:`ipsecemu.routing.render` turns it into an ``frr.conf``.  The
types check themselves on construction, so a bad value is refused here (``ConfigError`` naming the field)
rather than by FRR after the daemons are up.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field

from ipsecemu.base.errors import ConfigError

ASN_MAX = 4_294_967_295
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")


class PathKind(enum.Enum):
    """Where a neighbour's routes come from, as the Virtual WAN hub classifies them.

    The hub routing preference ranks paths by this kind; on other nodes it only names the session."""

    EXPRESSROUTE = "expressroute"  # an MSEE over ExpressRoute private peering
    VPN = "vpn"  # a VPN gateway instance (BGP inside the IPsec tunnel)
    INTERNAL = "internal"  # same-AS plumbing (hub router <-> VPN instances)
    OTHER = "other"


class HubRoutingPreference(enum.Enum):
    """Virtual WAN hub routing preference (about-virtual-hub-routing-preference.md): ExpressRoute is the
    default."""

    EXPRESSROUTE = "ExpressRoute"
    VPN = "VPN"
    ASPATH = "ASPath"

    @classmethod
    def parse(cls, value: str) -> HubRoutingPreference:
        """Accept Azure's spellings ("ExpressRoute", "VpnGateway", "ASPath", "AS Path"), any case."""
        key = value.replace(" ", "").replace("_", "").lower()
        aliases = {"expressroute": cls.EXPRESSROUTE, "vpn": cls.VPN, "vpngateway": cls.VPN,
                   "aspath": cls.ASPATH}
        if key not in aliases:
            raise ConfigError(f"hub_routing_preference: {value!r} is not one of ExpressRoute, VPN, ASPath")
        return aliases[key]


def _check_asn(asn: int, where: str) -> None:
    if not isinstance(asn, int) or isinstance(asn, bool) or not 1 <= asn <= ASN_MAX:
        raise ConfigError(f"{where}: ASN {asn!r} is not an integer in 1..{ASN_MAX}")


def _check_name(name: str, where: str) -> None:
    # Names end up in route-map / prefix-list names and file names: keep them plain.
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must match {_NAME.pattern}")


def _ipv4(value: str, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address") from exc


def _prefix(value: str, where: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not an IPv4 prefix (host bits must be zero)") from exc


@dataclass(frozen=True)
class BgpTimers:
    """Per-session BGP timers in seconds.  FRR accepts keepalive 0..65535 and hold 0 or 3..65535; the
    negotiated hold time is the smaller of both ends' (RFC 4271 §4.2)."""

    keepalive: int = 60
    hold: int = 180
    connect: int = 5  # retry interval of an idle session: short, so a recovered path comes back quickly

    def __post_init__(self) -> None:
        if not 1 <= self.keepalive <= 65535:
            raise ConfigError(f"timers.keepalive: {self.keepalive} is not in 1..65535")
        if not 3 <= self.hold <= 65535:
            raise ConfigError(f"timers.hold: {self.hold} is not in 3..65535")
        if self.keepalive > self.hold // 3:
            raise ConfigError(f"timers: keepalive {self.keepalive} s must be at most a third of hold "
                              f"{self.hold} s (RFC 4271 recommends one third)")
        if not 1 <= self.connect <= 65535:
            raise ConfigError(f"timers.connect: {self.connect} is not in 1..65535")


@dataclass(frozen=True)
class BfdProfile:
    """BFD (RFC 5880) timers: a session is declared down after ``multiplier`` missed intervals."""

    name: str = "fast"
    detect_multiplier: int = 3
    receive_interval_ms: int = 300
    transmit_interval_ms: int = 300

    def __post_init__(self) -> None:
        _check_name(self.name, "bfd.name")
        if not 2 <= self.detect_multiplier <= 255:
            raise ConfigError(f"bfd.detect_multiplier: {self.detect_multiplier} is not in 2..255")
        for label, value in (("receive_interval_ms", self.receive_interval_ms),
                             ("transmit_interval_ms", self.transmit_interval_ms)):
            if not 10 <= value <= 60000:
                raise ConfigError(f"bfd.{label}: {value} is not in 10..60000")

    @property
    def detection_seconds(self) -> float:
        """Worst-case detection time with equal timers on both ends."""
        return self.detect_multiplier * max(self.receive_interval_ms, self.transmit_interval_ms) / 1000


@dataclass(frozen=True)
class Neighbor:
    """One BGP session as seen from this node.

    ``advertise``: the exact prefixes sent to this neighbour; ``None`` sends everything the node has
    (a transit router such as the MSEE), ``()`` sends nothing."""

    name: str
    address: str
    remote_asn: int
    kind: PathKind = PathKind.OTHER
    timers: BgpTimers = field(default_factory=BgpTimers)
    bfd: bool = False
    advertise: tuple[str, ...] | None = None
    prepend: int = 0  # extra copies of the local ASN on what is sent (Microsoft's fix for S3 stickiness)
    local_preference: int | None = None  # set on what is received (the hub's policy overrides this)
    weight: int | None = None  # FRR's local-only first tie-break, set on what is received
    update_source: str | None = None  # address or interface the session is sourced from
    ebgp_multihop: int | None = None  # BGP to an address behind a tunnel is not "directly connected"
    passive: bool = False  # wait for the peer (Azure does not initiate BGP from an APIPA address)
    next_hop_self: bool = False
    route_reflector_client: bool = False
    # refused on receipt: e.g. a CE never learns the prefix of its own tunnel endpoints through the
    # tunnel (recursive routing: IKE/ESP would enter the tunnel they build)
    deny_in: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"neighbors.{self.name}"
        _check_name(self.name, where)
        _ipv4(self.address, f"{where}.address")
        _check_asn(self.remote_asn, f"{where}.remote_asn")
        if not isinstance(self.kind, PathKind):
            raise ConfigError(f"{where}.kind: {self.kind!r} is not a PathKind")
        if self.advertise is not None:
            if isinstance(self.advertise, str):
                raise ConfigError(f"{where}.advertise: give a list of prefixes, not one string")
            for p in self.advertise:
                _prefix(p, f"{where}.advertise")
        for p in self.deny_in:
            _prefix(p, f"{where}.deny_in")
        if not 0 <= self.prepend <= 10:
            raise ConfigError(f"{where}.prepend: {self.prepend} is not in 0..10")
        if self.local_preference is not None and not 0 <= self.local_preference <= ASN_MAX:
            raise ConfigError(f"{where}.local_preference: {self.local_preference} is out of range")
        if self.weight is not None and not 0 <= self.weight <= 65535:
            raise ConfigError(f"{where}.weight: {self.weight} is not in 0..65535")
        if self.ebgp_multihop is not None and not 1 <= self.ebgp_multihop <= 255:
            raise ConfigError(f"{where}.ebgp_multihop: {self.ebgp_multihop} is not in 1..255")


@dataclass(frozen=True)
class StaticRoute:
    """A static route; zebra ranks it (distance 1) over any BGP route (20 eBGP / 200 iBGP) for the same
    prefix, which is the hub's "static over BGP" rule."""

    prefix: str
    nexthop: str  # an IPv4 address, an interface name, or "blackhole"

    def __post_init__(self) -> None:
        _prefix(self.prefix, "static_routes.prefix")
        if not isinstance(self.nexthop, str) or not self.nexthop:
            raise ConfigError("static_routes.nexthop: must be an address, an interface or 'blackhole'")


@dataclass(frozen=True)
class RoutingNode:
    """Everything the routing daemon of one node needs.

    ``originate``: prefixes this node puts into BGP itself (its own networks); which neighbour hears
    them is decided per neighbour by ``Neighbor.advertise``.  ``hub_preference`` is set only on an Azure
    Virtual WAN hub router and turns on the hub route-selection policy."""

    name: str
    asn: int
    router_id: str
    neighbors: tuple[Neighbor, ...] = ()
    originate: tuple[str, ...] = ()
    static_routes: tuple[StaticRoute, ...] = ()
    hub_preference: HubRoutingPreference | None = None
    maximum_paths: int = 2  # ECMP width (both VPN instances, both MSEE links)
    bfd_profile: BfdProfile = field(default_factory=BfdProfile)

    def __post_init__(self) -> None:
        _check_name(self.name, "node.name")
        _check_asn(self.asn, f"{self.name}.asn")
        _ipv4(self.router_id, f"{self.name}.router_id")
        for p in self.originate:
            _prefix(p, f"{self.name}.originate")
        if not 1 <= self.maximum_paths <= 64:
            raise ConfigError(f"{self.name}.maximum_paths: {self.maximum_paths} is not in 1..64")
        seen: set[str] = set()
        for n in self.neighbors:
            for key in (n.name, n.address):
                if key in seen:
                    raise ConfigError(f"{self.name}.neighbors: {key!r} appears twice")
                seen.add(key)
            if n.prepend and n.remote_asn == self.asn:
                raise ConfigError(f"{self.name}.neighbors.{n.name}.prepend: AS-path prepend applies to "
                                  f"eBGP only (AS {n.remote_asn} is our own)")

    @property
    def uses_bfd(self) -> bool:
        return any(n.bfd for n in self.neighbors)

    @property
    def daemons(self) -> tuple[str, ...]:
        """The FRR daemons this node needs, in start order (zebra first: the others register with it)."""
        names = ["zebra", "bgpd"]
        if self.static_routes:
            names.append("staticd")
        if self.uses_bfd:
            names.append("bfdd")
        return tuple(names)
