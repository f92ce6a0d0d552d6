"""The routing part of a lab plan: one FRR instance per routing node, its ``frr.conf`` generated from
the lab's ``routing:`` intent with the Azure builders (:mod:`ipsecemu.routing.azure`).

Who is who:
- the CE (``routing.ce``): eBGP to each MSEE over its ER link, advertising ``expressroute.advertise``;
  eBGP (multihop, sourced from its BGP address inside the tunnel) to each VPN instance, advertising
  ``vpn.advertise`` (optionally prepended).  It prefers what the instances send (local-preference 200),
  so its traffic to Azure enters the tunnels while they carry BGP, and it refuses, from the instances,
  the Azure prefixes that hold its own IKE peers (recursive routing: IKE/ESP must not enter the tunnel
  they build, so those stay on ExpressRoute).
- each MSEE (AS 12076): eBGP to the CE and to the hub, transit.
- each VPN instance (the non-CE end of a connection with ``bgp:``, AS 65515): eBGP to the CE inside the
  tunnel, iBGP to the hub router over their shared LAN.
- the hub router (AS 65515): eBGP to the MSEEs, iBGP to the instances, originates ``hub.prefixes``,
  and carries the hub routing preference as policy (see :mod:`ipsecemu.routing.render`).

Pure functions of the topology; errors here are bugs (``lab check`` already refused bad intent).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from ipsecemu.routing.azure import (
    APIPA_BGP_RANGE,
    AZURE_BFD,
    AZURE_DOCUMENTED_TIMERS,
    HUB_ASN,
    LAB_TIMERS,
    MSEE_ASN,
    Peer,
    hub_node,
    msee_node,
    vpn_instance_node,
)
from ipsecemu.routing.frr import daemons_for_config
from ipsecemu.routing.intent import BgpTimers, Neighbor, PathKind, RoutingNode
from ipsecemu.routing.render import render_frr_conf

from ..routing_schema import link_addresses
from ..topology import Topology, VpnConnection
from .model import FRR, Daemon, GeneratedFile
from .vpn import tunnel_name

CE_PREFER_VPN = 200  # local-preference the CE puts on what the VPN instances send


def timers_of(topo: Topology) -> BgpTimers:
    assert topo.routing is not None
    return AZURE_DOCUMENTED_TIMERS if topo.routing.timers == "azure" else LAB_TIMERS


def bgp_conns(topo: Topology) -> list[VpnConnection]:
    return [c for c in topo.vpn if c.bgp]


def instances(topo: Topology) -> list[str]:
    """The VPN gateway instances: the non-CE end of every connection with ``bgp:``, in file order."""
    assert topo.routing is not None
    ce = topo.routing.ce.node
    used = {n for c in bgp_conns(topo) for n in c.nodes if n != ce}
    return [n.name for n in topo.nodes if n.name in used]


def routing_nodes(topo: Topology) -> list[str]:
    """Every node that runs FRR, in file order."""
    if topo.routing is None:
        return []
    r = topo.routing
    names = {r.ce.node, r.hub, *r.msees, *instances(topo)}
    return [n.name for n in topo.nodes if n.name in names]


def _links(topo: Topology) -> list[tuple[str, str, str, str]]:
    out = [(lk.a.node, lk.a.iface, lk.b.node, lk.b.iface) for lk in topo.links]
    for s in topo.segments:  # a segment is a link between every pair of its members
        out += [(a.node, a.iface, b.node, b.iface) for i, a in enumerate(s.members) for b in s.members[i + 1:]]
    return out


def _addresses(topo: Topology) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for n in topo.nodes:
        for iface, cidr in n.addresses:
            out.setdefault((n.name, iface), []).append(cidr)
    return out


def link_pair(topo: Topology, a: str, b: str) -> tuple[str, str]:
    pair = link_addresses(a, b, _links(topo), _addresses(topo))
    assert pair is not None, f"no addressed link {a} <-> {b} (lab check refuses this)"
    return pair


def router_id(topo: Topology, node: str) -> str:
    """The node's loopback address when it has one (stable), else its first IPv4 address."""
    addrs = topo.node(node).addresses
    v4 = [(i, ipaddress.ip_interface(a)) for i, a in addrs if ipaddress.ip_interface(a).version == 4]
    lo = [a for i, a in v4 if i == "lo"]
    return str((lo or [a for _, a in v4])[0].ip)


def _apipa(address: str) -> bool:
    return APIPA_BGP_RANGE[0] <= ipaddress.IPv4Address(address) <= APIPA_BGP_RANGE[1]


def build_nodes(topo: Topology) -> dict[str, RoutingNode]:
    """node name -> its routing intent (generated configs; a user's own CE config is not here)."""
    if topo.routing is None:
        return {}
    r = topo.routing
    timers, ce = timers_of(topo), r.ce.node
    out: dict[str, RoutingNode] = {}
    # --- MSEEs
    for m in r.msees:
        ce_addr, m_addr = link_pair(topo, ce, m)
        hub_addr, m_addr2 = link_pair(topo, r.hub, m)
        out[m] = msee_node(m, router_id(topo, m), ce=[Peer(ce, ce_addr, r.ce.asn)], hub=[Peer(r.hub, hub_addr, HUB_ASN)],
                           timers=timers)
    # --- VPN instances
    hub_peers: list[Peer] = []
    ike_peers: list[str] = []
    ce_vpn: list[Neighbor] = []
    for inst in instances(topo):
        hub_addr, inst_lan = link_pair(topo, r.hub, inst)
        hub_peers.append(Peer(inst, inst_lan, HUB_ASN))
        ce_peers: list[Peer] = []
        mine_addr = ""
        for c in bgp_conns(topo):
            if inst not in c.nodes:
                continue
            mine, theirs = c.bgp_of(inst), c.bgp_of(ce)
            assert mine is not None and theirs is not None
            ce_peers.append(Peer(f"{ce}-{c.name}" if len(ce_peers) else ce, theirs, r.ce.asn))
            ike_peers.append(c.addresses[c.nodes.index(inst)])
            ce_vpn.append(Neighbor(name=f"{inst}-{c.name}" if len(ce_vpn) and _dup(ce_vpn, inst) else inst,
                                   address=mine, remote_asn=HUB_ASN, kind=PathKind.VPN, timers=timers, bfd=True,
                                   advertise=r.ce.vpn_advertise, prepend=r.ce.vpn_prepend,
                                   local_preference=CE_PREFER_VPN, update_source=theirs, ebgp_multihop=2))
            mine_addr = mine
        out[inst] = vpn_instance_node(inst, inst_lan, ce=ce_peers, hub=[Peer(r.hub, hub_addr, HUB_ASN)],
                                      timers=timers, apipa=_apipa(mine_addr), update_source=mine_addr)
    # --- hub router
    msee_peers = [Peer(m, link_pair(topo, r.hub, m)[1], MSEE_ASN) for m in r.msees]
    out[r.hub] = hub_node(r.hub, router_id(topo, r.hub), r.hub_prefixes, msees=msee_peers, instances=hub_peers,
                          preference=r.preference, timers=timers)
    # --- CE
    guard = tuple(p for p in r.hub_prefixes
                  if any(ipaddress.IPv4Address(a) in ipaddress.IPv4Network(p) for a in ike_peers))
    ce_vpn = [dataclasses.replace(n, deny_in=guard) for n in ce_vpn]
    ce_er = [Neighbor(name=m, address=link_pair(topo, ce, m)[1], remote_asn=MSEE_ASN, kind=PathKind.EXPRESSROUTE,
                      timers=timers, bfd=True, advertise=r.ce.er_advertise) for m in r.msees]
    originate = tuple(dict.fromkeys((*r.ce.er_advertise, *r.ce.vpn_advertise)))
    out[ce] = RoutingNode(name=ce, asn=r.ce.asn, router_id=router_id(topo, ce), neighbors=(*ce_er, *ce_vpn),
                          originate=originate, bfd_profile=AZURE_BFD)
    return out


def _dup(ns: list[Neighbor], name: str) -> bool:
    return any(n.name == name for n in ns)


def bgp_tunnels(topo: Topology, node: str) -> list[dict[str, str]]:
    """The tun devices of ``node``'s ipsecemu gateway that carry BGP, with the node's BGP address on
    each ({"dev": "vpn0", "address": "169.254.21.2/32"}).  ``lab up`` creates them, persistent and
    addressed, before zebra starts (svc_frr): FRR 8.4's zebra reads addresses and links on two netlink
    sockets, and drops an address that comes in before its interface (FRR issue #13288) -- a tun the
    gateway creates and addresses within a millisecond while zebra runs loses its address there for
    good, and bgpd then refuses every connection sourced from it ("nexthop_set failed").  A charon
    node keeps its BGP addresses on lo (svc_vpn) and has no such device."""
    if topo.node(node).kind != "ipsecemu":
        return []
    out = []
    for c in bgp_conns(topo):
        mine = c.bgp_of(node) if node in c.nodes else None
        if mine is not None and c.bgp_of(c.nodes[1 - c.nodes.index(node)]) is not None:
            out.append({"dev": tunnel_name(topo, node, c), "address": f"{mine}/32"})
    return out


def frr_dir(lab_dir: Path, node: str) -> Path:
    return lab_dir / node / "frr"


def daemons(topo: Topology, lab_dir: Path, node: str, nodes: dict[str, RoutingNode]) -> tuple[Daemon, ...]:
    """The FRR instance of ``node`` (none when it does not route dynamically)."""
    if node not in nodes:
        return ()
    assert topo.routing is not None
    user_conf = topo.routing.ce.frr_config if node == topo.routing.ce.node else None
    if user_conf is not None:
        text = Path(user_conf).read_text()
        names = daemons_for_config(text)
        origin = f"user config {user_conf}"
    else:
        text = render_frr_conf(nodes[node])
        names = nodes[node].daemons
        origin = "generated from routing:"
    text = f"! {node}: {origin} (ipsecemu lab up)\n" + text
    state = frr_dir(lab_dir, node)
    return (Daemon(FRR, node, (), (GeneratedFile(f"{node}/frr/frr.conf", text),), log=f"{node}/frr",
                   run_dir=str(state), info={"daemons": names, "origin": origin, "role": role_of(topo, node),
                                             "tunnels": bgp_tunnels(topo, node)}),)


def role_of(topo: Topology, node: str) -> str:
    assert topo.routing is not None
    r = topo.routing
    return "ce" if node == r.ce.node else "hub" if node == r.hub else "msee" if node in r.msees else "instance"
