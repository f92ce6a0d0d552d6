"""`lab up --smoke` for a VPN lab: ping and a short iperf3 through the tunnels (their counters must
move), and a capture on the initiator's uplinks that must show only ESP for the protected pair and
clear text for the rest."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from ipsecemu.net.netns import ns_argv, ns_exec
from ipsecemu.net.proc import start, stop_popen

from .capture import Capture, CaptureError, pcap_flows
from .state import LabState
from .svc_vpn import tunnel_status
from .topology import Topology

Say = Callable[[str], None]


def _run(ns: str, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return ns_exec(ns, *cmd, timeout=timeout, check=False)


def _host_in(topo: Topology, prefixes: list[str], exclude: set[str]) -> tuple[str, str] | None:
    for n in topo.nodes:
        if n.kind != "host" or n.name in exclude:
            continue
        for _, cidr in n.addresses:
            ip = ipaddress.ip_interface(cidr).ip
            if any(ip in ipaddress.ip_network(p) for p in prefixes):
                return n.name, str(ip)
    return None


def smoke_plan(topo: Topology) -> dict[str, Any] | None:
    """Which hosts and links the VPN smoke check uses (None: nothing to check).

    ``protected``: a host inside what the responder side routes into the tunnel (onprem1);
    ``remote``: a host inside what the initiator side routes into it (spoke1); ``clear``: a host
    in neither (onprem2, over ER in clear); ``links``: the initiator's interfaces towards
    routers/VPN nodes (the CE-MSEE links), where the capture runs."""
    if not topo.vpn:
        return None
    c = topo.vpn[0]
    init, resp = c.nodes
    if topo.routing is not None and c.bgp:  # BGP lab: what the CE advertises over the VPN <-> Azure's prefixes
        to_prem, to_azure = list(topo.routing.ce.vpn_advertise), list(topo.routing.hub_prefixes)
        all_vpn = to_prem + to_azure
    else:
        to_prem, to_azure = list(c.routes_of(resp)), list(c.routes_of(init))
        all_vpn = [p for v in topo.vpn for n in v.nodes for p in v.routes_of(n)]
    prot = _host_in(topo, to_prem, set())
    remote = _host_in(topo, to_azure, set())
    if prot is None or remote is None:
        return None
    clear = next(((n.name, str(ipaddress.ip_interface(n.addresses[0][1]).ip)) for n in topo.nodes
                  if n.kind == "host" and n.addresses and n.name not in (prot[0], remote[0])
                  and not any(ipaddress.ip_interface(n.addresses[0][1]).ip in ipaddress.ip_network(p)
                              for p in all_vpn)), None)
    links = []
    for lk in topo.links:
        for a, b in ((lk.a, lk.b), (lk.b, lk.a)):
            if a.node == init and topo.node(b.node).kind != "host":
                links.append(a.iface)
    for s in topo.segments:
        links += [m.iface for m in s.members if m.node == init]
    ike = sorted({a for v in topo.vpn for a in v.addresses})
    return {"initiator": init, "protected": prot, "remote": remote, "clear": clear, "links": links, "ike": ike}


def _tunnel_packets(state: LabState) -> dict[str, int]:
    return {f"{t['node']}/{t['conn']}": sum(c["packets_out"] + c["packets_in"] for c in t.get("child_sas", []))
            for t in tunnel_status(state) if "error" not in t}


def smoke(topo: Topology, state: LabState, say: Say, *, capture_s: float = 3.0, iperf_s: int = 2) -> bool:
    """`lab up --smoke` for a VPN lab: ping through the tunnels, a short iperf3, a capture on the
    initiator's uplinks showing only ESP for the protected pair and clear text for the rest."""
    plan = smoke_plan(topo)
    if plan is None:
        say("smoke: no host pair across the VPN found; skipped the VPN checks")
        return True
    ok = True
    (pn, pip), (rn, rip) = plan["protected"], plan["remote"]
    pns, rns = topo.netns(pn), topo.netns(rn)
    # 1. ping through the tunnels, counters must move
    before = _tunnel_packets(state)
    res = _run(pns, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-q", rip)
    after = _tunnel_packets(state)
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) > before.get(k, 0)}
    good = res.returncode == 0 and bool(moved)
    if res.returncode != 0:
        say(f"smoke: ping output: {' / '.join(res.stdout.strip().splitlines()[-2:])}")
    ok &= good
    say(f"smoke: ping {pn} -> {rn} ({rip}) through the tunnels: {'ok' if good else 'FAILED'} "
        f"(tunnel packets: {', '.join(f'{k} +{v}' for k, v in sorted(moved.items())) or 'none'})")
    # 2. a short iperf3, server started and stopped by PID
    if shutil.which("iperf3"):
        # a persistent server (not -1), so a transient bad run can be retried; stopped by PID below
        srv = start(ns_argv(rns, "iperf3", "-s", "-p", "5201"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _tunnel_packets(state)
        try:
            rate = None
            why = ""
            runs = 0  # complete runs without a result (a transient one is retried, twice at most)
            for _ in range(20):
                # 4 streams: ECMP spreads them over the tunnels (active-active)
                cl = _run(pns, "iperf3", "-c", rip, "-p", "5201", "-t", str(iperf_s), "-P", "4", "-J",
                          timeout=iperf_s + 15)
                try:
                    doc = json.loads(cl.stdout)
                    why = str(doc.get("error", ""))
                except ValueError:
                    doc, why = {}, (cl.stderr.strip().splitlines() or ["no output"])[-1]
                if cl.returncode == 0:
                    try:
                        rate = doc["end"]["sum_received"]["bits_per_second"] / 1e6
                        break
                    except (KeyError, TypeError):
                        runs += 1
                        why = f"no result in iperf3's JSON ({why or 'no error given'})"
                        if runs == 3:
                            break
                        continue
                if "refused" not in cl.stdout + cl.stderr:
                    break
                time.sleep(0.1)
            ok &= rate is not None
            after = _tunnel_packets(state)
            used = sorted(k for k in after if k.startswith(plan["initiator"] + "/") and after[k] > before.get(k, 0))
            say(f"smoke: iperf3 {pn} -> {rn}, 4 streams, {iperf_s} s through the tunnels: "
                + (f"{rate:.0f} Mbit/s" if rate is not None else f"FAILED ({why})")
                + f" (tunnels used: {', '.join(k.split('/', 1)[1] for k in used) or 'none'})")
        finally:
            stop_popen(srv, 3)
    else:
        say("smoke: iperf3 not installed; skipped")
    # 3. capture on the uplinks while pinging both pairs
    caps = []
    try:
        for iface in plan["links"]:
            cap = Capture(state, plan["initiator"], iface, state.dir / f"smoke-{plan['initiator']}-{iface}.pcap")
            cap.start()
            caps.append(cap)
        t0 = time.monotonic()
        _run(pns, "ping", "-c", "10", "-i", "0.1", "-W", "1", "-q", rip)
        if plan["clear"]:
            _run(topo.netns(plan["clear"][0]), "ping", "-c", "10", "-i", "0.1", "-W", "1", "-q", rip)
        time.sleep(max(0.0, capture_s - (time.monotonic() - t0)))
    except CaptureError as exc:
        say(f"smoke: capture: {exc}")
        return False
    finally:
        for cap in caps:
            cap.stop()
    flows: dict[tuple[str, str, str], int] = {}
    for cap in caps:
        for k, v in pcap_flows(cap.path).items():
            flows[k] = flows.get(k, 0) + v
    pair = {(pip, rip), (rip, pip)}
    leaked = sum(v for (s, d, _k), v in flows.items() if (s, d) in pair)
    esp = sum(v for (s, d, k), v in flows.items()
              if k in ("esp-in-udp", "esp") and s in plan["ike"] and d in plan["ike"])
    good = leaked == 0 and esp > 0
    where = ", ".join(f"{plan['initiator']}:{i}" for i in plan["links"])
    msg = (f"smoke: capture {capture_s:g} s on {where}: "
           f"{esp} ESP packets between {' / '.join(plan['ike'])}, {leaked} cleartext {pn} <-> {rn} packets")
    if plan["clear"]:
        cn, cip = plan["clear"]
        clear = sum(v for (s, d, _k), v in flows.items() if (s, d) in {(cip, rip), (rip, cip)})
        good &= clear > 0
        msg += f"; {cn} <-> {rn} in clear (over ER): {clear} packets"
    ok &= good
    say(f"{msg}: {'ok' if good else 'FAILED'}")
    return ok
