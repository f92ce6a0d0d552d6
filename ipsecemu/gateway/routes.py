"""Which prefixes a connection routes into its tun (pure; ``datapath`` installs them).

The class of bug of issue 12: a responder routed the negotiated selectors into its tun as whole
prefixes -- its own LAN included -- and swallowed its own IKE_AUTH reply.  The rules here hold
for every role and every source of routes derived from selectors (negotiated or, for a trap
connection, configured):

* a prefix that contains our own IKE address, or one of our own (local) selectors, is never
  routed into the tun: that is our side of the tunnel, and routing it there would take our IKE,
  our ESP and our LAN away (``ip route replace`` even replaces the LAN's connected route);
* transport mode (RFC 4303 section 3.1.1) protects host-to-host traffic: only the peer's host
  address (/32, /128) is routed, never its selectors' prefixes.  That address is also the IKE
  peer, so the route is only safe in its own table (``tunnel.table``), which the host's policy
  rules (e.g. ``ip rule ... ipproto tcp dport 8080 table N``) steer the protected traffic to;
  in the main table it would carry IKE and ESP to the peer into the tun, and is not installed;
* "everything" (0.0.0.0/0, ::/0) is never routed from selectors (set ``tunnel.routes``).

Explicit ``tunnel.routes`` are the user's and are installed as given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from ipsecemu.config.gateway import Network, TunnelConfig
from ipsecemu.ike.ts import TrafficSelector
from ipsecemu.io.tunnel import networks

__all__ = ["ANY_NETS", "RoutePlan", "plan_routes"]

ANY_NETS = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RoutePlan:
    """The prefixes to route into the tun, the preferred source address of those routes (transport
    mode: our IKE address, so the host's own packets carry it), and why others were left out."""

    nets: tuple[Network, ...] = ()
    prefsrc: str | None = None
    skipped: tuple[str, ...] = field(default=())  # "10.0.1.0/24: contains our IKE address 10.0.1.4"


def _host(addr: IpAddress) -> Network:
    return ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")


def plan_routes(tunnel: TunnelConfig, *, mode: str, local_addr: str, remote_addr: str,
                local_ts: Sequence[TrafficSelector], remote_ts: Sequence[TrafficSelector]) -> RoutePlan:
    """The routes of one Child SA (negotiated selectors) or of a trap connection before any SA
    (configured selectors); ``local_addr``/``remote_addr`` are the IKE addresses."""
    if tunnel.external_routes:  # a lab's route agent routes into the tun, not us
        return RoutePlan()
    if tunnel.routes:
        return RoutePlan(tuple(tunnel.routes))
    ours = ipaddress.ip_address(local_addr)
    peer = ipaddress.ip_address(remote_addr)
    local_nets = [n for n in networks(local_ts) if n not in ANY_NETS]
    skipped: list[str] = []
    if mode == "transport":
        if not any(t.start_addr.version == peer.version and t.start_addr <= peer <= t.end_addr  # type: ignore[operator]
                   for t in remote_ts):
            return RoutePlan(skipped=(f"{peer}: the peer's address is outside its selectors",))
        if tunnel.table is None:
            return RoutePlan(skipped=(f"{_host(peer)}: transport mode in the main table would route IKE and ESP "
                                      "to the peer into the tun (set tunnel.table and steer with ip rule)",))
        cand, prefsrc = [_host(peer)], str(ours)
    else:
        cand, prefsrc = [], None
        for n in networks(remote_ts):
            if n in ANY_NETS:
                skipped.append(f"{n}: covers everything (set tunnel.routes)")
            elif n not in cand:
                cand.append(n)
    out: list[Network] = []
    for n in cand:
        if n.version == ours.version and ours in n:
            skipped.append(f"{n}: contains our IKE address {ours}")
        elif mine := next((m for m in local_nets if m.version == n.version and m.subnet_of(n)), None):  # type: ignore[arg-type]
            skipped.append(f"{n}: contains our own selector {mine}")
        else:
            out.append(n)
    return RoutePlan(tuple(out), prefsrc if out else None, tuple(skipped))
