"""Topology -> :class:`LabPlan`: every derivation ``lab up`` needs, done once, without I/O.

Only ``rand`` (a throw-away MACsec key when the file gives none) is not a function of the
topology; tests pass a fixed one.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import hostpolicy_plan
from ..state import run_dir
from ..topology import FORWARDING_KINDS, Node, Topology, phy_ifname
from . import frr, impair, macsec, vpn
from .model import Daemon, LabPlan, NodePlan, SegmentPlan, Tap, Veth

MACSEC_OVERHEAD = 40  # SecTAG with SCI (16) + ICV (16) + one 802.1Q tag (4), rounded up
BRIDGE_PORT = "p{}"
NO_IPV6 = (("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1"))


def lab_dir_of(name: str, base: Path | None = None) -> Path:
    """Where ``lab up`` keeps the state of lab ``name`` (:class:`ipsecemu.lab.state.LabState`)."""
    return (base or run_dir()) / name


def base_sysctls(n: Node) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if not n.ipv6:  # no IPv6 unless asked: avoids DAD/RA noise and MOBIKE updates
        pairs += NO_IPV6
    # loose reverse-path filter: with ECMP the return path may use the other link
    pairs += [("net.ipv4.conf.all.rp_filter", "2"), ("net.ipv4.conf.default.rp_filter", "2")]
    if n.kind in FORWARDING_KINDS:
        pairs.append(("net.ipv4.ip_forward", "1"))
        if n.ipv6:
            pairs.append(("net.ipv6.conf.all.forwarding", "1"))
    return tuple(pairs)


def _interfaces(topo: Topology, node: str) -> tuple[str, ...]:
    out = [ep.iface for lk in topo.links for ep in (lk.a, lk.b) if ep.node == node]
    out += [phy_ifname(ep.iface) for lk in topo.links if lk.macsec is not None
            for ep in (lk.a, lk.b) if ep.node == node]
    out += [ep.iface for s in topo.segments for ep in s.members if ep.node == node]
    return tuple(out)


def _taps(topo: Topology, node: str) -> tuple[str, ...]:
    return tuple(ep.iface for lk in topo.links if lk.macsec is not None for ep in (lk.a, lk.b) if ep.node == node)


def _links(topo: Topology) -> tuple[Veth | Tap, ...]:
    out: list[Veth | Tap] = []
    for lk in topo.links:
        na, nb = topo.netns(lk.a.node), topo.netns(lk.b.node)
        if impair.link_impair(topo, lk) is not None:  # both ends meet the element in the link's helper netns
            out += impair.veths(topo, lk, na, nb)
            continue
        if lk.macsec is None:
            out.append(Veth(na, lk.a.iface, nb, lk.b.iface, lk.mtu))
            continue
        # MACsec: the veth carries SecTAG + ICV (+ a VLAN tag) on top of the tap's frames
        out.append(Veth(na, phy_ifname(lk.a.iface), nb, phy_ifname(lk.b.iface), (lk.mtu or 1500) + MACSEC_OVERHEAD))
        out += [Tap(topo.netns(ep.node), ep.iface, lk.mtu) for ep in (lk.a, lk.b)]
    return tuple(out)


def _segments(topo: Topology) -> tuple[SegmentPlan, ...]:
    return tuple(
        SegmentPlan(s.name, topo.segment_netns(s.name),
                    tuple(Veth(topo.netns(ep.node), ep.iface, topo.segment_netns(s.name), BRIDGE_PORT.format(j), s.mtu)
                          for j, ep in enumerate(s.members)),
                    s.mtu, NO_IPV6)
        for s in topo.segments)


def compile_plan(topo: Topology, base: Path | None = None, rand: macsec.Random = os.urandom) -> LabPlan:
    """The plan of ``topo`` (already checked by :func:`ipsecemu.lab.check.check_file`), for a lab
    whose state lives under ``base`` (default :func:`ipsecemu.lab.state.run_dir`)."""
    lab_dir = lab_dir_of(topo.name, base)
    macsec_daemons, notes = macsec.daemons(topo, lab_dir, rand)
    routing = frr.build_nodes(topo)
    nodes = []
    for n in topo.nodes:
        # start order: MACsec links carry the IPsec underlay in the MACsec lab, so they come first;
        # FRR before the VPN: IKE needs the ExpressRoute routes BGP installs
        daemons: list[Daemon] = [*macsec_daemons.get(n.name, []), *frr.daemons(topo, lab_dir, n.name, routing),
                                 *vpn.daemons(topo, lab_dir, n.name), *hostpolicy_plan.daemons(topo, lab_dir, n.name)]
        nodes.append(NodePlan(
            name=n.name, kind=n.kind, netns=topo.netns(n.name), base_sysctls=base_sysctls(n),
            interfaces=_interfaces(topo, n.name), taps=_taps(topo, n.name), addresses=n.addresses,
            routes=n.routes, rules=n.rules, sysctls=n.sysctls, tunnels=vpn.tunnels(topo, lab_dir, n.name),
            daemons=tuple(daemons)))
    agent = vpn.route_agent(topo, lab_dir)
    return LabPlan(name=topo.name, source=topo.source, lab_dir=lab_dir, nodes=tuple(nodes),
                   segments=_segments(topo), links=_links(topo),
                   daemons=(*impair.daemons(topo, lab_dir), *((agent[0],) if agent else ())),
                   route_plan=agent[1] if agent else None, notes=tuple(notes), impairs=impair.helpers(topo, NO_IPV6))
