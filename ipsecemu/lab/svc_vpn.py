"""Lab service: the VPN gateways of a lab, and the route agent that stands in for VPN BGP.

``start(topo, state, say)`` runs after the network is built:

* one ``ipsecemu gateway run`` per ``ipsecemu`` node that has VPN connections, inside its netns,
  with a config generated into the node's state dir ``<lab dir>/<node>/gateway.yaml`` (0600: it
  holds the PSK);
* one charon (strongSwan + kernel-libipsec, :class:`ipsecemu.strongswan.charon.Charon`) per
  ``strongswan`` node, the same connections loaded over vici, its own routes off;
* one route agent (:mod:`ipsecemu.lab.route_agent`, ``python -m ipsecemu.lab.route_agent agent LABDIR``)
  in the root netns.

Route-based VPN: the gateways negotiate 0.0.0.0/0 <-> 0.0.0.0/0 (strongSwan, being policy-based,
gets the routed prefixes as traffic selectors) and install no routes themselves.  The agent asks
each gateway (control socket; charon over vici) every ``POLL`` seconds which tunnels are up and
keeps the routes in line, as BGP over the tunnels would:

* on a VPN node, each prefix of ``vpn.connections[].routes[node]`` goes into the tunnels that are
  up (ECMP over several), in ``table[node]`` (default main); no tunnel up: the route is withdrawn;
* on any node, a route whose next hop is a VPN node's address and whose destination that node
  sends into a tunnel (the hub's 10.0.1.0/24 via Instance0/Instance1) keeps only the next hops
  whose tunnel is up; none left: withdrawn, so traffic falls back to the less specific path.

Every PID is registered in the lab state, so ``lab down`` stops it; a daemon that dies during
start raises :class:`~ipsecemu.lab.errors.BuildError` with its last log lines (``lab up`` rolls back).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ipsecemu.config.connection import parse_connection
from ipsecemu.gateway.control import ControlError, request
from ipsecemu.net.netns import ipr_in, ns_argv
from ipsecemu.net.proc import pid_alive
from ipsecemu.net.proc import start as start_process
from ipsecemu.strongswan.charon import Charon, CharonError
from ipsecemu.strongswan.conn import Child, Conn

from .errors import BuildError
from .state import LabState
from .topology import Topology, VpnConnection

Say = Callable[[str], None]
PLAN_FILE = "vpn-plan.json"
STATUS_FILE = "vpn-routes.json"
UP_TIMEOUT = 45.0  # bounded wait for every tunnel at `lab up`
MAIN = 254
CHARON_DEV = "ipsec0"  # kernel-libipsec's one tun for all of a charon's SAs


# ---------------------------------------------------------------- what to run where


def node_conns(topo: Topology, node: str) -> list[VpnConnection]:
    return [c for c in topo.vpn if node in c.nodes]


def tunnel_name(topo: Topology, node: str, conn: VpnConnection) -> str:
    """The tun of ``conn`` on ``node``: ``vpn0``, ``vpn1``... in connection order (15-char safe)."""
    if topo.node(node).kind == "strongswan":
        return CHARON_DEV
    return f"vpn{node_conns(topo, node).index(conn)}"


def node_dir(state: LabState, node: str) -> Path:
    return state.dir / node


CHARON_BASE = Path("/tmp/ipsecemu-charon")


def charon_dir(state: LabState, node: str) -> Path:
    """A charon's instance dir.  Not under /run: charon runs with its own dir bind-mounted over
    /run (its pid file path is compiled in), which would hide a dir below /run from it."""
    d = (state.data.get("charon_dirs") or {}).get(node)
    return Path(d) if d else CHARON_BASE / state.name / node


def gateway_config(topo: Topology, node: str, state_dir: Path) -> dict[str, Any]:
    """``ipsecemu gateway run`` config (see ipsecemu.config.gateway) for an ipsecemu node."""
    conns: dict[str, Any] = {}
    for c in node_conns(topo, node):
        side = c.side_config(node)
        side.pop("name", None)
        if c.nodes[0] == node:
            side["close_action"] = "restart"
        side["tunnel"] = {"name": tunnel_name(topo, node, c), "routes": []}
        conns[c.name] = side
    return {"node": node, "lab": topo.name, "state_dir": str(state_dir),
            # ESP-in-UDP always: what the C loop runs fastest, and what libipsec peers need
            "datapath": {"encapsulation": "udp"}, "connections": conns}


def charon_conn(topo: Topology, node: str, conn: VpnConnection) -> Conn:
    """The :class:`~ipsecemu.strongswan.conn.Conn` of ``conn`` on a strongSwan node."""
    cfg = parse_connection(conn.side_config(node))
    peer = conn.nodes[1 - conn.nodes.index(node)]
    initiator = conn.nodes[0] == node
    child_life = cfg.child_lifetime.seconds or 3600
    ike_life = cfg.ike_lifetime.seconds or 28800
    child = Child(
        name=conn.name,
        # policy-based peer: what the other side routes to us <-> what we route into the tunnel
        local_ts=tuple(conn.routes_of(peer)) or ("0.0.0.0/0",),
        remote_ts=tuple(conn.routes_of(node)) or ("0.0.0.0/0",),
        esp_proposals=tuple(p.to_strongswan_string() for p in cfg.esp_proposals),
        start_action="start" if initiator else "none",
        dpd_action="restart" if initiator else "clear",
        close_action="start" if initiator else "none",
        rekey_time=max(60, child_life - 300), life_time=child_life)
    return Conn(name=conn.name, local_addrs=(str(cfg.local_address),), remote_addrs=(str(cfg.remote_address),),
                psk=cfg.auth.secret.decode(errors="replace"),
                proposals=tuple(p.to_strongswan_string() for p in cfg.ike_proposals),
                children=(child,), dpd_delay=cfg.dpd.interval, rekey_time=max(60, ike_life - 600), encap=True)


def route_plan(topo: Topology, state: LabState) -> dict[str, Any]:
    """What the agent watches: every tunnel, and every route that depends on a VPN node."""
    tunnels = []
    for c in topo.vpn:
        for node in c.nodes:
            kind = topo.node(node).kind
            ctl = (str(node_dir(state, node) / "control.sock") if kind == "ipsecemu"
                   else str(charon_dir(state, node) / "run" / "charon.vici"))
            tunnels.append({"conn": c.name, "node": node, "kind": kind, "netns": topo.netns(node),
                            "dev": tunnel_name(topo, node, c), "table": c.table_of(node),
                            "prefixes": list(c.routes_of(node)), "control": ctl})
    vpn_addr: dict[str, str] = {}  # address -> VPN node
    for c in topo.vpn:
        for node in c.nodes:
            for _, cidr in topo.node(node).addresses:
                vpn_addr[str(ipaddress.ip_interface(cidr).ip)] = node
    upstream = []
    for n in topo.nodes:
        for r in n.routes:
            if r.dst == "default":
                continue
            hops = []
            watched = False
            for h in r.nexthops:
                vn = vpn_addr.get(h.via or "")
                carried = vn is not None and vn != n.name and any(
                    ipaddress.ip_network(r.dst).subnet_of(ipaddress.ip_network(p))  # type: ignore[arg-type]
                    for t in tunnels if t["node"] == vn for p in t["prefixes"])
                watched |= carried
                hops.append({"via": h.via, "dev": h.dev, "weight": h.weight, "vpn_node": vn if carried else None})
            if watched:
                upstream.append({"node": n.name, "netns": topo.netns(n.name), "dst": r.dst,
                                 "table": r.table or MAIN, "metric": r.metric, "hops": hops})
    # S3: the routers next to a responder (the hub next to the instances) must send the responder's
    # prefixes to a VPN node; if their best route goes elsewhere, that traffic crosses ER in clear
    checks = []
    for c in topo.vpn:
        resp = c.nodes[1]
        for nb in _neighbors(topo, resp):
            if topo.node(nb).kind != "router":
                continue
            for p in c.routes_of(resp):
                if not any(x["node"] == nb and x["prefix"] == p for x in checks):
                    checks.append({"node": nb, "netns": topo.netns(nb), "prefix": p})
    return {"lab": topo.name, "tunnels": tunnels, "upstream": upstream, "vpn_addresses": sorted(vpn_addr),
            "checks": checks}


def _neighbors(topo: Topology, node: str) -> set[str]:
    out = {b.node for lk in topo.links for a, b in ((lk.a, lk.b), (lk.b, lk.a)) if a.node == node}
    for s in topo.segments:
        if any(m.node == node for m in s.members):
            out |= {m.node for m in s.members}
    out.discard(node)
    return out


def warnings(state: LabState) -> list[str]:
    """Live S3 check: VPN prefixes a router next to the VPN gateways sends elsewhere (in clear)."""
    try:
        plan = json.loads((state.dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return []
    vpn = set(plan.get("vpn_addresses", []))
    out = []
    for chk in sorted(plan.get("checks", []), key=lambda x: (x["node"], x["prefix"])):
        net = ipaddress.ip_network(chk["prefix"])
        probe = str(net.network_address + 1 if net.num_addresses > 1 else net.network_address)
        try:
            with ipr_in(chk["netns"]) as ipr:
                r = ipr.route("get", dst=probe)[0]
        except Exception:  # noqa: BLE001 - no route at all is not the S3 problem
            continue
        gws = {r.get_attr("RTA_GATEWAY")} | {h.get_attr("RTA_GATEWAY") for h in (r.get_attr("RTA_MULTIPATH") or [])}
        gws.discard(None)
        if gws and not gws & vpn:
            out.append(f"{chk['prefix']} reachable over ER without VPN: {chk['node']} routes it via "
                       f"{', '.join(sorted(gws))}, not through the VPN gateways (S3: same prefix advertised "
                       "over ExpressRoute and VPN, or every tunnel down)")
    return out


# ---------------------------------------------------------------- start


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        # own session: a Ctrl-C on `lab up` reaches only us; rollback stops these by PID
        return start_process(cmd, stdout=f, stderr=f)


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "(no log)"
    return "\n    ".join(lines) or "(empty log)"


def start(topo: Topology, state: LabState, say: Say) -> None:
    if not topo.vpn:
        return
    nodes = sorted({n for c in topo.vpn for n in c.nodes}, key=[x.name for x in topo.nodes].index)
    watch: list[tuple[str, int, Path]] = []  # (what, pid, log) checked while waiting
    for node in nodes:
        kind = topo.node(node).kind
        d = node_dir(state, node)
        d.mkdir(mode=0o700, exist_ok=True)
        if kind == "ipsecemu":
            cfg_path = d / "gateway.yaml"
            fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the PSK
            with os.fdopen(fd, "w") as f:
                f.write("# generated by ipsecemu lab up (ipsecemu.lab.svc_vpn); lab secrets inside\n")
                yaml.safe_dump(gateway_config(topo, node, d), f, sort_keys=False)
            log = state.logs_dir / f"{node}-gateway.log"
            cmd = ns_argv(topo.netns(node), sys.executable, "-m", "ipsecemu", "gateway", "run", str(cfg_path))
            proc = _spawn(cmd, log)
            state.add_process(proc.pid, "daemon", node, cmd, str(log))
            watch.append((f"{node}: gateway daemon", proc.pid, log))
            say(f"vpn: {node}: ipsecemu gateway pid {proc.pid} ({len(node_conns(topo, node))} tunnel(s))")
        else:
            cdir = CHARON_BASE / topo.name / node
            with state.update() as data:  # recorded first: `lab down` removes it (builder.teardown)
                data.setdefault("charon_dirs", {})[node] = str(cdir)
                extra = data.setdefault("extra_dirs", [])
                if str(cdir.parent) not in extra:
                    extra.append(str(cdir.parent))
            shutil.rmtree(cdir, ignore_errors=True)
            cdir.mkdir(parents=True, mode=0o700)
            ch = Charon(topo.netns(node), cdir, key_log=True)
            try:
                ch.start()
                assert ch.pid is not None
                state.add_process(ch.pid, "daemon", node, ["charon"], str(ch.log_file))
                _drop_charon_rule(topo.netns(node))
                for c in node_conns(topo, node):
                    ch.load(charon_conn(topo, node, c))
            except CharonError as exc:
                if ch.pid is not None:
                    state.add_process(ch.pid, "daemon", node, ["charon"], str(ch.log_file))
                raise BuildError(f"{node}: strongSwan: {exc}") from None
            watch.append((f"{node}: charon", ch.pid, ch.log_file))
            say(f"vpn: {node}: strongSwan charon pid {ch.pid} ({len(node_conns(topo, node))} connection(s))")
    plan = route_plan(topo, state)
    (state.dir / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    log = state.logs_dir / "vpn-routes.log"
    cmd = [sys.executable, "-m", "ipsecemu.lab.route_agent", "agent", str(state.dir)]
    agent = _spawn(cmd, log)
    state.add_process(agent.pid, "daemon", None, cmd, str(log))
    watch.append(("VPN route agent", agent.pid, log))
    _wait_up(state, plan, watch, say)


def _drop_charon_rule(ns: str) -> None:
    """kernel-libipsec routes every remote TS into ipsec0 via table 220 (no knob turns that off in
    5.9.8), which would also catch IKE to a peer inside a remote TS and onprem2's clear traffic.
    Dropping charon's rule (added once at start) leaves routing to the lab's agent."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        with ipr_in(ns) as ipr:
            found = [r for r in ipr.get_rules(family=2) if (r.get_attr("FRA_TABLE") or r["table"]) == 220]
            for r in found:
                try:
                    ipr.rule("del", family=2, table=220, priority=r.get_attr("FRA_PRIORITY"))
                except Exception:  # noqa: BLE001 - raced with charon; checked again below
                    pass
            if found:
                return
        time.sleep(0.05)


def _wait_up(state: LabState, plan: dict[str, Any], watch: list[tuple[str, int, Path]], say: Say) -> None:
    t0 = time.monotonic()
    last_say = t0
    want = {f"{t['node']}/{t['conn']}" for t in plan["tunnels"]}
    while True:
        for what, pid, log in watch:
            if not pid_alive(pid, None):
                raise BuildError(f"{what} (pid {pid}) exited during start; last log lines:\n    {_tail(log)}")
        st = read_status(state)
        up = {k for k, v in (st.get("tunnels") or {}).items() if v}
        if st.get("applied") and want <= up:
            say(f"vpn: {len(plan['tunnels']) // 2} tunnel(s) up in {time.monotonic() - t0:.1f} s, "
                f"routes installed")
            return
        now = time.monotonic()
        if now - t0 > UP_TIMEOUT:
            missing = ", ".join(sorted(want - up))
            raise BuildError(f"VPN tunnels not up within {UP_TIMEOUT:.0f} s: {missing} "
                             f"(logs in {state.logs_dir} and {state.dir}/<node>/)")
        if now - last_say >= 3:
            say(f"vpn: waiting for tunnels ({len(up & want)}/{len(want)} sides up, {now - t0:.0f} s)")
            last_say = now
        time.sleep(0.1)


def read_status(state: LabState) -> dict[str, Any]:
    """The route agent's last published view (``{}`` before its first pass)."""
    try:
        return json.loads((state.dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- tunnel status


def tunnel_status(state: LabState) -> list[dict[str, Any]]:
    """One entry per (VPN node, connection): state, SPIs, byte/packet counters, tunnel device.

    Asks each ipsecemu gateway (``list_sas`` on its control socket) and each charon (vici)."""
    out: list[dict[str, Any]] = []
    for node, kind in (state.data.get("nodes") or {}).items():
        if kind == "ipsecemu":
            sock = state.dir / node / "control.sock"
            if not (state.dir / node / "gateway.yaml").exists():
                continue  # no VPN on this node
            try:
                sas = request(sock, "list_sas", timeout=2.0)
            except (ControlError, OSError, ValueError) as exc:
                out.append({"node": node, "kind": kind, "error": str(exc)})
                continue
            for sa in sas:
                out.append(_entry(node, kind, sa))
        elif kind == "strongswan":
            ch = Charon(state.node_netns(node) or "", charon_dir(state, node))
            if not ch.vici_path.exists():
                continue
            try:
                sas = ch.list_sas_all()
            except Exception as exc:  # noqa: BLE001 - charon gone
                out.append({"node": node, "kind": kind, "error": f"charon does not answer: {exc}"})
                continue
            for name, sa in sas:
                sa = {**sa, "name": name, "child-sas": list(sa.get("child-sas", {}).values())}
                out.append(_entry(node, kind, sa))
    return out


def _entry(node: str, kind: str, sa: dict[str, Any]) -> dict[str, Any]:
    children = []
    for c in sa.get("child-sas", []):
        children.append({"spi_in": c.get("spi-in"), "spi_out": c.get("spi-out"), "state": c.get("state"),
                         "proposal": c.get("proposal") or "/".join(
                             x for x in (c.get("encr-alg"), c.get("encr-keysize")) if x),
                         "bytes_in": int(c.get("bytes-in", 0)), "packets_in": int(c.get("packets-in", 0)),
                         "bytes_out": int(c.get("bytes-out", 0)), "packets_out": int(c.get("packets-out", 0)),
                         "tunnel": c.get("tunnel", CHARON_DEV if kind == "strongswan" else None)})
    return {"node": node, "kind": kind, "conn": sa.get("name"), "state": sa.get("state"),
            "local": sa.get("local-host"), "remote": sa.get("remote-host"), "child_sas": children}
