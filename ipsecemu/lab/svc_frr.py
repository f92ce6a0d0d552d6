"""Lab service: the FRR instance of every routing node (:mod:`ipsecemu.lab.plan.frr`).

``start`` runs after the network is built and before the VPN gateways.  First it creates the tun devices
BGP rides in (persistent, up, with the node's BGP /32: :func:`ipsecemu.lab.plan.frr.bgp_tunnels`), so
zebra learns them and their addresses in its start-up dump; the gateway attaches to them later.  (A
device created and addressed while zebra 8.4 runs may lose its address in zebra for good -- FRR issue
#13288 -- and bgpd then never connects from it: "nexthop_set failed ... intf (Unknown)".)  Then it starts each node's FRR
(zebra + bgpd, + bfdd/staticd as the config needs) in the node's netns with its state, sockets and
logs under ``<lab dir>/<node>/frr/`` (:class:`ipsecemu.routing.frr.FrrInstance`), registers every
daemon's PID (``lab down`` stops them by PID), and waits for the sessions that do not ride a tunnel
(ExpressRoute, hub <-> instances): IKE between the CE and the instances needs the routes they bring.
``settle`` runs after every service and waits (bounded) for the BGP sessions inside the tunnels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ServiceError, SystemSetupError
from ipsecemu.net.netns import netlink
from ipsecemu.net.tun import TunError, attachable, open_tun
from ipsecemu.routing.frr import FrrInstance

from .errors import BuildError
from .plan import FRR, Daemon, LabPlan
from .state import LabState

Say = Callable[[str], None]
UNDERLAY_TIMEOUT = 40.0  # ER and hub sessions (BGP connect retry 5 s, BFD up in about 1 s)
TUNNEL_BGP_TIMEOUT = 40.0
QUIET, QUIET_TIMEOUT = 1.5, 15.0  # prefix counts unchanged this long = converged


def instance(plan_or_state: LabPlan | LabState, node: str) -> FrrInstance:
    """The FRR instance of ``node`` in a planned or running lab (for vtysh, status, tests)."""
    if isinstance(plan_or_state, LabPlan):
        lab_dir, ns = plan_or_state.lab_dir, plan_or_state.node(node).netns
    else:
        lab_dir, ns = plan_or_state.dir, plan_or_state.node_netns(node) or ""
    d = Path(lab_dir) / node / "frr"
    daemons = ("zebra", "bgpd", "staticd", "bfdd")
    return FrrInstance(node, d, ns, tuple(x for x in daemons if (d / f"{x}.pid").exists()) or ("zebra", "bgpd"))


def routing_nodes(state: LabState) -> list[str]:
    """The nodes of a running lab that run FRR (those with an FRR state dir)."""
    return [n for n in (state.data.get("nodes") or {}) if (state.dir / n / "frr" / "frr.conf").exists()]


def sessions(inst: FrrInstance) -> dict[str, dict[str, Any]]:
    """peer address -> FRR's summary row (state, pfxRcd, pfxSnt, desc) of every BGP session."""
    doc = inst.vtysh_json("show bgp ipv4 unicast summary json", daemon="bgpd")
    peers: dict[str, dict[str, Any]] = doc.get("peers", {}) if isinstance(doc, dict) else {}
    return peers


def _tunnel_devices(ns: str, node: str, tunnels: list[dict[str, str]]) -> None:
    """Create ``node``'s BGP tun devices before its zebra starts: persistent (the gateway attaches to
    them when its first SA comes, and sets their MTU), up, with the node's BGP /32 on each."""
    if not tunnels:
        return
    # a link of that name that is not a free tun (a topology interface, say) is left alone: the gateway
    # refuses it at start with the error that names the clash
    mine = netlink(ns, lambda ipr: [t for t in tunnels if attachable(ipr, t["dev"])])
    for t in mine:
        try:
            os.close(open_tun(t["dev"], persist=True, netns=ns))
        except TunError as exc:
            raise BuildError(f"{node}: BGP tunnel device: {exc}") from None

    def setup(ipr: Any) -> None:
        for t in mine:
            idx = ipr.link_lookup(ifname=t["dev"])[0]
            ipr.link("set", index=idx, state="up")
            addr, _, plen = t["address"].partition("/")
            ipr.addr("replace", index=idx, address=addr, prefixlen=int(plen))

    netlink(ns, setup)


def _start_one(plan: LabPlan, state: LabState, d: Daemon) -> FrrInstance:
    assert d.node is not None and d.run_dir is not None
    ns = plan.node(d.node).netns
    _tunnel_devices(ns, d.node, d.info.get("tunnels") or [])  # before zebra: see the module doc
    inst = FrrInstance(d.node, Path(d.run_dir), ns, tuple(d.info["daemons"]))
    try:
        inst.start(d.files[0].text, timeout=15.0)
    except (ServiceError, SystemSetupError) as exc:
        raise BuildError(f"{d.node}: FRR: {exc}") from None
    finally:  # registered even when start failed half-way, so rollback stops what runs
        for daemon, pid in inst.running_daemons().items():
            state.add_process(pid, "daemon", d.node, inst.daemon_argv(daemon), str(inst.log_path(daemon)))
    return inst


def start(plan: LabPlan, state: LabState, say: Say) -> None:
    frrs = plan.daemons_of(FRR)
    if not frrs:
        return
    t0 = time.monotonic()
    with state.update() as data:  # who is who, for `lab status` and `lab bgp`
        data["routing"] = {d.node: d.info.get("role", "") for d in frrs if d.node}
    insts = {d.node: _start_one(plan, state, d) for d in frrs if d.node}
    say(f"frr: {len(insts)} instance(s) up ({', '.join(insts)}) in {time.monotonic() - t0:.1f} s; "
        f"vtysh: ipsecemu lab exec {plan.name}/NODE -- vtysh -c 'show bgp summary'")
    tunnel_peers = _tunnel_peers(plan)
    _wait(insts, lambda node, addr: (node, addr) not in tunnel_peers, UNDERLAY_TIMEOUT, "ExpressRoute/hub", say)


def settle(plan: LabPlan, state: LabState, say: Say) -> None:
    """After the VPN is up: wait for the BGP sessions inside the tunnels."""
    frrs = plan.daemons_of(FRR)
    if not frrs:
        return
    insts = {d.node: instance(plan, d.node) for d in frrs if d.node}
    tunnel_peers = _tunnel_peers(plan)
    if tunnel_peers:
        _wait(insts, lambda node, addr: (node, addr) in tunnel_peers, TUNNEL_BGP_TIMEOUT, "in-tunnel", say)
        _quiet(insts, say)


def _counts(insts: dict[str, FrrInstance]) -> dict[tuple[str, str], tuple[int, int]]:
    out = {}
    for node, inst in insts.items():
        try:
            peers = sessions(inst)
        except ServiceError:
            continue
        out.update({(node, a): (int(p.get("pfxRcd", 0)), int(p.get("pfxSnt", 0))) for a, p in peers.items()})
    return out


def _quiet(insts: dict[str, FrrInstance], say: Say) -> None:
    """Sessions up is not routes in: wait (bounded) until no node's prefix counts move for QUIET s, so
    the first traffic after `lab up` takes the paths BGP settles on."""
    t0 = time.monotonic()
    last, since = _counts(insts), time.monotonic()
    while time.monotonic() - t0 < QUIET_TIMEOUT:
        time.sleep(0.3)
        now = _counts(insts)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET:
            say(f"frr: routes settled in {time.monotonic() - t0:.1f} s")
            return
    say(f"frr: routes still moving after {QUIET_TIMEOUT:.0f} s (continuing)")


def _tunnel_peers(plan: LabPlan) -> set[tuple[str, str]]:
    """(node, peer address) of every BGP session that rides a tunnel."""
    out: set[tuple[str, str]] = set()
    for n in plan.nodes:
        for t in n.tunnels:
            for p in t.prefixes:
                if p.endswith("/32"):
                    out.add((n.name, p[:-3]))
    return out


def _wait(insts: dict[str, FrrInstance], want: Callable[[str, str], bool], timeout: float, what: str,
          say: Say) -> None:
    t0 = time.monotonic()
    last_say = t0
    while True:
        pending: list[str] = []
        for node, inst in insts.items():
            down = [d for d in inst.daemons if d not in inst.running_daemons()]
            if down:
                raise BuildError(f"{node}: FRR {', '.join(down)} exited (logs in {inst.state_dir})")
            try:
                peers = sessions(inst)
            except ServiceError:
                pending.append(f"{node} (bgpd not answering)")
                continue
            pending += [f"{node}->{a} {p.get('state')}" for a, p in peers.items()
                        if want(node, a) and p.get("state") != "Established"]
        now = time.monotonic()
        if not pending:
            say(f"frr: {what} BGP sessions established in {now - t0:.1f} s")
            return
        if now - t0 > timeout:
            raise BuildError(f"{what} BGP sessions not established within {timeout:.0f} s: "
                             f"{', '.join(sorted(pending))} (FRR logs in <lab dir>/<node>/frr/)")
        if now - last_say >= 5:
            say(f"frr: waiting for {what} BGP sessions ({len(pending)} pending, {now - t0:.0f} s)")
            last_say = now
        time.sleep(0.2)


# ---------------------------------------------------------------- status


def _label(peers: dict[str, dict[str, Any]], nexthop: str | None, iface: str | None) -> str:
    """A next hop as the user reads it: the BGP peer it came from ("msee1 (expressroute)")."""
    if nexthop and nexthop in peers:
        return str(peers[nexthop].get("desc") or nexthop)
    return nexthop or (f"dev {iface}" if iface else "?")


def _kind(label: str) -> str:
    if "(expressroute)" in label or "(other)" in label:
        return "ER"
    if "(vpn)" in label or "(internal)" in label:
        return "VPN"
    return "?"


def node_status(inst: FrrInstance, role: str) -> dict[str, Any]:
    """BGP sessions of one node; for the CE and the hub also the chosen path of each BGP/static prefix."""
    peers = sessions(inst)
    out: dict[str, Any] = {"role": role, "sessions": [
        {"peer": a, "desc": p.get("desc", ""), "state": p.get("state"), "pfx_in": p.get("pfxRcd", 0),
         "pfx_out": p.get("pfxSnt", 0), "up_down": p.get("peerUptime", "")} for a, p in sorted(peers.items())]}
    if role not in ("ce", "hub"):
        return out
    paths = []
    routes = inst.vtysh_json("show ip route json", daemon="zebra")
    for prefix, entries in sorted(routes.items()):
        for e in entries:
            if not e.get("selected") or e.get("protocol") not in ("bgp", "static"):
                continue
            hops = [_label(peers, h.get("ip"), h.get("interfaceName")) for h in e.get("nexthops", [])
                    if h.get("active")]
            hops = list(dict.fromkeys(hops))  # a recursive next hop shows once, not per resolution
            kinds = {_kind(h) for h in hops}
            via = "static" if e["protocol"] == "static" else ("/".join(sorted(kinds)) or "?")
            paths.append({"prefix": prefix, "path": via, "via": hops})
    out["paths"] = paths
    if role == "hub":
        out["warnings"] = _s3_warnings(inst, peers, paths)
    return out


def _s3_warnings(inst: FrrInstance, peers: dict[str, dict[str, Any]], paths: list[dict[str, Any]]) -> list[str]:
    """S3: a prefix the hub also learns from a VPN instance, yet routes over ExpressRoute (in clear)."""
    vpn_peers = {a for a, p in peers.items() if "(vpn)" in str(p.get("desc", ""))}
    out = []
    for p in paths:
        if p["path"] != "ER" or not vpn_peers:
            continue
        try:
            doc = inst.vtysh_json(f"show bgp ipv4 unicast {p['prefix']} json", daemon="bgpd")
        except ServiceError:
            continue
        if any((x.get("peer") or {}).get("peerId") in vpn_peers for x in doc.get("paths", [])):
            out.append(f"{p['prefix']} is also advertised over the VPN, but the hub routes it over ExpressRoute: "
                       "Azure -> on-prem for it crosses ER in clear (S3; hub routing preference, or advertise "
                       "it over one path only)")
    return out


def routing_status(state: LabState) -> dict[str, Any]:
    """Per routing node its sessions (and paths), plus one line when every tunnel's BGP is down and
    traffic falls back to ExpressRoute in clear."""
    roles: dict[str, str] = state.data.get("routing") or {}
    nodes: dict[str, Any] = {}
    for node, role in roles.items():
        try:
            nodes[node] = node_status(instance(state, node), role)
        except ServiceError as exc:
            nodes[node] = {"role": role, "error": str(exc)}
    out: dict[str, Any] = {"nodes": nodes, "fallback": None}
    ce = next((n for n, r in roles.items() if r == "ce"), None)
    if ce and "sessions" in nodes.get(ce, {}):
        vpn = [x for x in nodes[ce]["sessions"] if "(vpn)" in x["desc"]]
        if vpn and not any(x["state"] == "Established" for x in vpn):
            out["fallback"] = (f"all {len(vpn)} VPN BGP sessions of the CE are down: traffic between on-prem and "
                               "Azure falls back to ExpressRoute, IN CLEAR")
    return out
