"""Azure's side of the routing, with Azure's numbers.

Sources (Microsoft's public docs, MicrosoftDocs/azure-docs; details in docs/notes-routing.md):
- ASNs: expressroute-routing.md (MSEE AS 12076 on every peering), vpn-gateway-vpn-faq.md and
  virtual-wan FAQ (Azure gateways and the Virtual WAN hub use AS 65515; 65515-65520 reserved).
- Timers: expressroute-bfd.md (MSEE BGP keepalive 60 s / hold 180 s; minimum 3 s / 10 s; BFD on every
  new private peering; CE sample ``bfd interval 300 min_rx 300 multiplier 3``).  The VPN gateway's BGP
  timers are not documented; the lab uses the same numbers.
- APIPA BGP addresses of VPN instances: 169.254.21.0-169.254.22.255 (vpn-gateway-howto-aws-bgp,
  virtual-wan-site-to-site-portal); Azure does not initiate BGP from them.
- Hub route selection: about-virtual-hub-routing-preference.md — longest prefix match, static over BGP,
  hub routing preference, ECMP.

This module holds the constants, the hub's selection rules as a small pure model (tests compare FRR's
choice against it), and builders for the Azure-side nodes' :class:`RoutingNode`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipsecemu.base.errors import ConfigError
from ipsecemu.routing.intent import (
    BfdProfile,
    BgpTimers,
    HubRoutingPreference,
    Neighbor,
    PathKind,
    RoutingNode,
    StaticRoute,
)

MSEE_ASN = 12076
HUB_ASN = 65515
AZURE_RESERVED_ASNS = range(65515, 65521)
# Private ASNs a customer may use with Azure (public ones are fine too when owned).
CUSTOMER_PRIVATE_ASNS = (range(64512, 65515), range(65521, 65535))
APIPA_BGP_RANGE = (ipaddress.IPv4Address("169.254.21.0"), ipaddress.IPv4Address("169.254.22.255"))
PREFIX_LIMIT = 4000  # per BGP session; beyond it Azure drops the session

# What Azure documents for the MSEE (expressroute-bfd.md).
AZURE_DOCUMENTED_TIMERS = BgpTimers(keepalive=60, hold=180)
AZURE_MIN_TIMERS = BgpTimers(keepalive=3, hold=10)
AZURE_BFD = BfdProfile(name="azure", detect_multiplier=3, receive_interval_ms=300, transmit_interval_ms=300)
# The lab's default: Azure's minimum BGP timers plus BFD, so failover takes about a second, not minutes.
# connect 2 s: a session whose peer was not up yet at the first try (lab start, a link back) retries soon.
LAB_TIMERS = BgpTimers(keepalive=AZURE_MIN_TIMERS.keepalive, hold=AZURE_MIN_TIMERS.hold, connect=2)

# Hub policy: (local-preference, MED) put on routes received from each kind of path.  BGP best-path
# compares weight, then local-preference, then AS-path length, origin, MED (with always-compare-med:
# across ASes), eBGP over iBGP.  So local-preference implements "ER over VPN" / "VPN over ER" ahead of
# the AS path, and equal local-preference leaves AS-path length first (the ASPath preference), with MED
# breaking ties towards ExpressRoute ("ties: ER if local").
LOCAL_PREF_PREFERRED = 200
LOCAL_PREF_DEFAULT = 100
MED_ER = 0
MED_VPN = 10
INSTANCE_OWN_WEIGHT = 100


def hub_path_attributes(preference: HubRoutingPreference, kind: PathKind) -> tuple[int, int] | None:
    """(local-preference, MED) the hub sets on routes learnt over a ``kind`` path, or None when the
    preference does not rank that kind (internal/other sessions keep BGP's defaults)."""
    if kind not in (PathKind.EXPRESSROUTE, PathKind.VPN):
        return None
    med = MED_ER if kind is PathKind.EXPRESSROUTE else MED_VPN
    if preference is HubRoutingPreference.EXPRESSROUTE:
        preferred = kind is PathKind.EXPRESSROUTE
    elif preference is HubRoutingPreference.VPN:
        preferred = kind is PathKind.VPN
    else:
        preferred = False
    return (LOCAL_PREF_PREFERRED if preferred else LOCAL_PREF_DEFAULT, med)


@dataclass(frozen=True)
class HubCandidate:
    """One route the hub knows: its prefix, where it came from, its AS-path length, a label for the
    next hop (e.g. "msee1", "instance0").  ``kind`` None means a static route."""

    prefix: str
    kind: PathKind | None
    as_path_len: int
    via: str


def select_hub_routes(destination: str, candidates: Sequence[HubCandidate],
                      preference: HubRoutingPreference) -> tuple[HubCandidate, ...]:
    """The documented Virtual WAN selection for one destination address: the routes traffic uses (more
    than one = ECMP).  All candidates are local to the hub (remote-hub routes are not modelled)."""
    dest = ipaddress.IPv4Address(destination)
    matching = [c for c in candidates if dest in ipaddress.IPv4Network(c.prefix)]
    if not matching:
        return ()
    # 1. longest prefix match
    longest = max(ipaddress.IPv4Network(c.prefix).prefixlen for c in matching)
    left = [c for c in matching if ipaddress.IPv4Network(c.prefix).prefixlen == longest]
    # 2. static over BGP
    static = [c for c in left if c.kind is None]
    if static:
        return tuple(static)
    # 3. hub routing preference
    def shortest(cs: Iterable[HubCandidate]) -> list[HubCandidate]:
        cs = list(cs)
        best = min(c.as_path_len for c in cs)
        return [c for c in cs if c.as_path_len == best]

    er = [c for c in left if c.kind is PathKind.EXPRESSROUTE]
    vpn = [c for c in left if c.kind is PathKind.VPN]
    other = [c for c in left if c.kind not in (PathKind.EXPRESSROUTE, PathKind.VPN)]
    if preference is HubRoutingPreference.EXPRESSROUTE:
        left = shortest(er or vpn or other)
    elif preference is HubRoutingPreference.VPN:
        left = shortest(vpn or er or other)
    else:
        left = shortest(left)
        # ties between sources: ExpressRoute when local
        if any(c.kind is PathKind.EXPRESSROUTE for c in left):
            left = [c for c in left if c.kind is PathKind.EXPRESSROUTE]
    # 4. ECMP across what is left
    return tuple(left)


def check_customer_asn(asn: int, where: str) -> None:
    """Refuse the ASNs Azure reserves for itself (a CE with 65515 cannot peer with the hub)."""
    if asn in AZURE_RESERVED_ASNS or asn == MSEE_ASN:
        raise ConfigError(f"{where}: AS {asn} is reserved by Azure (12076, 65515-65520)")


def check_apipa_bgp_address(address: str, where: str) -> None:
    addr = ipaddress.IPv4Address(address)
    if not APIPA_BGP_RANGE[0] <= addr <= APIPA_BGP_RANGE[1]:
        raise ConfigError(f"{where}: {address} is outside Azure's APIPA BGP range "
                          "169.254.21.0-169.254.22.255")


@dataclass(frozen=True)
class Peer:
    """The far end of a session, as the builders need it."""

    name: str
    address: str
    asn: int


def msee_node(name: str, router_id: str, ce: Sequence[Peer], hub: Sequence[Peer],
              timers: BgpTimers = LAB_TIMERS, bfd: bool = True,
              bfd_profile: BfdProfile = AZURE_BFD) -> RoutingNode:
    """An MSEE (AS 12076): eBGP to the CE over the ER link, eBGP to the hub's ExpressRoute gateway; it
    passes every route through (transit), as private peering does."""
    for p in ce:
        check_customer_asn(p.asn, f"{name}.ce.{p.name}")
    neighbors = [Neighbor(name=p.name, address=p.address, remote_asn=p.asn, kind=PathKind.OTHER,
                          timers=timers, bfd=bfd) for p in ce]
    neighbors += [Neighbor(name=p.name, address=p.address, remote_asn=HUB_ASN, kind=PathKind.OTHER,
                           timers=timers, bfd=bfd) for p in hub]
    return RoutingNode(name=name, asn=MSEE_ASN, router_id=router_id, neighbors=tuple(neighbors),
                       bfd_profile=bfd_profile)


def vpn_instance_node(name: str, router_id: str, ce: Sequence[Peer], hub: Sequence[Peer],
                      timers: BgpTimers = LAB_TIMERS, bfd: bool = True, apipa: bool = False,
                      bfd_profile: BfdProfile = AZURE_BFD, update_source: str | None = None) -> RoutingNode:
    """A Virtual WAN VPN gateway instance (AS 65515): eBGP with the CE inside the tunnel (multihop: the
    CE's BGP address is not its tunnel endpoint), iBGP with the hub router carrying what it learns
    (next-hop-self: the hub cannot reach the CE's tunnel address).  The instance keeps what its own
    tunnel taught it (weight) over what the hub sends back, or the hub's preference would make it stop
    announcing the VPN path and the hub would lose it; the hub router alone decides.  With ``apipa``
    the instance only listens, as Azure does not initiate BGP from an APIPA address."""
    neighbors = []
    for p in ce:
        check_customer_asn(p.asn, f"{name}.ce.{p.name}")
        neighbors.append(Neighbor(name=p.name, address=p.address, remote_asn=p.asn, kind=PathKind.OTHER,
                                  timers=timers, bfd=bfd, ebgp_multihop=2, passive=apipa,
                                  weight=INSTANCE_OWN_WEIGHT, update_source=update_source))
    neighbors += [Neighbor(name=p.name, address=p.address, remote_asn=HUB_ASN, kind=PathKind.INTERNAL,
                           timers=timers, bfd=bfd, next_hop_self=True) for p in hub]
    return RoutingNode(name=name, asn=HUB_ASN, router_id=router_id, neighbors=tuple(neighbors),
                       bfd_profile=bfd_profile)


def hub_node(name: str, router_id: str, originate: Sequence[str], msees: Sequence[Peer],
             instances: Sequence[Peer], preference: HubRoutingPreference = HubRoutingPreference.EXPRESSROUTE,
             static_routes: Sequence[StaticRoute] = (), timers: BgpTimers = LAB_TIMERS, bfd: bool = True,
             bfd_profile: BfdProfile = AZURE_BFD) -> RoutingNode:
    """The Virtual WAN hub router with its ExpressRoute gateway (AS 65515): eBGP to the MSEEs, iBGP to
    the VPN instances (not a route reflector: an instance needs no other instance's tunnel routes), the
    hub and spoke prefixes originated, and the hub routing preference as policy."""
    neighbors = [Neighbor(name=p.name, address=p.address, remote_asn=MSEE_ASN, kind=PathKind.EXPRESSROUTE,
                          timers=timers, bfd=bfd) for p in msees]
    # next-hop-self towards the instances: they cannot reach the MSEE link addresses of ER routes
    neighbors += [Neighbor(name=p.name, address=p.address, remote_asn=HUB_ASN, kind=PathKind.VPN,
                           timers=timers, bfd=bfd, next_hop_self=True) for p in instances]
    return RoutingNode(name=name, asn=HUB_ASN, router_id=router_id, neighbors=tuple(neighbors),
                       originate=tuple(originate), static_routes=tuple(static_routes),
                       hub_preference=preference, bfd_profile=bfd_profile)
