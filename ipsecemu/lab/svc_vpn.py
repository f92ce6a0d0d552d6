"""Lab service: the VPN gateways of a lab, and the route agent that stands in for VPN BGP.

``start(topo, state, say)`` runs after the network is built:

* one ``ipsecemu gateway run`` per ``ipsecemu`` node that has VPN connections, inside its netns,
  with a config generated into the node's state dir ``<lab dir>/<node>/gateway.yaml`` (0600: it
  holds the PSK);
* one charon (strongSwan + kernel-libipsec, :class:`ipsecemu.lab.strongswan.Charon`) per
  ``strongswan`` node, the same connections loaded over vici, its own routes off;
* one route agent (``python -m ipsecemu.lab.svc_vpn agent LABDIR``) in the root netns.

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
start raises :class:`~ipsecemu.lab.builder.BuildError` with its last log lines (``lab up`` rolls back).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .builder import BuildError, ipr_in
from .state import LabState, pid_alive
from .topology import Topology, VpnConnection

Say = Callable[[str], None]
PLAN_FILE = "vpn-plan.json"
STATUS_FILE = "vpn-routes.json"
POLL = 0.25  # seconds between agent passes
REFRESH_PASSES = 8  # every 2 s the agent re-installs its routes even without a change
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


def charon_conn(topo: Topology, node: str, conn: VpnConnection) -> Any:
    """The :class:`~ipsecemu.lab.strongswan.Conn` of ``conn`` on a strongSwan node."""
    from ipsecemu.config.connection import parse_connection

    from .strongswan import Child, Conn

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
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)


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
            cmd = ["ip", "netns", "exec", topo.netns(node), sys.executable, "-m", "ipsecemu",
                   "gateway", "run", str(cfg_path)]
            proc = _spawn(cmd, log)
            state.add_process(proc.pid, "daemon", node, cmd, str(log))
            watch.append((f"{node}: gateway daemon", proc.pid, log))
            say(f"vpn: {node}: ipsecemu gateway pid {proc.pid} ({len(node_conns(topo, node))} tunnel(s))")
        else:
            from .strongswan import Charon, CharonError

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
    cmd = [sys.executable, "-m", "ipsecemu.lab.svc_vpn", "agent", str(state.dir)]
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


# ---------------------------------------------------------------- the route agent


def ipsecemu_tunnels(control: str) -> dict[str, bool] | None:
    """``{connection: has an installed Child SA}`` from a gateway, None if it does not answer."""
    from ipsecemu.gateway.control import ControlError, request

    try:
        res = request(control, "counters", timeout=1.0)
    except (ControlError, OSError, ValueError):
        return None
    return {name: bool(c.get("sas")) for name, c in (res.get("connections") or {}).items()}


def charon_tunnels(vici_path: str) -> dict[str, bool] | None:
    """``{connection: ESTABLISHED with an INSTALLED child}`` from charon over vici."""
    import socket

    try:
        import vici

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(vici_path)
            out: dict[str, bool] = {}
            for item in vici.Session(s).list_sas():
                for name, sa in item.items():
                    n = name.decode() if isinstance(name, bytes) else name
                    ok = sa.get("state") in (b"ESTABLISHED", "ESTABLISHED") and any(
                        ch.get("state") in (b"INSTALLED", "INSTALLED") for ch in sa.get("child-sas", {}).values())
                    out[n] = out.get(n, False) or ok
            return out
        finally:
            s.close()
    except Exception:  # noqa: BLE001 - charon gone or busy: treat as "no tunnel"
        return None


class Agent:
    """One pass = ask every gateway, then make routes match; applies only what changed."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir
        self.plan = json.loads((lab_dir / PLAN_FILE).read_text())
        self.applied: dict[tuple, tuple] = {}
        self.changes = 0
        self.passes = 0

    def poll(self) -> dict[str, bool]:
        by_ctl: dict[str, dict[str, bool] | None] = {}
        up: dict[str, bool] = {}
        for t in self.plan["tunnels"]:
            if t["control"] not in by_ctl:
                fn = ipsecemu_tunnels if t["kind"] == "ipsecemu" else charon_tunnels
                by_ctl[t["control"]] = fn(t["control"])
            ans = by_ctl[t["control"]] or {}
            up[f"{t['node']}/{t['conn']}"] = bool(ans.get(t["conn"]))
        return up

    def desired(self, up: dict[str, bool]) -> dict[tuple, tuple]:
        want: dict[tuple, tuple] = {}
        for t in self.plan["tunnels"]:  # tunnel routes: (netns, table, dst) -> devs
            live = up[f"{t['node']}/{t['conn']}"]
            for p in t["prefixes"]:
                key = (t["netns"], t["table"], p, None)
                devs = set(want.get(key, ()))
                if live:
                    devs.add(("dev", t["dev"]))
                want[key] = tuple(sorted(devs))
        for u in self.plan["upstream"]:
            key = (u["netns"], u["table"], u["dst"], u["metric"])
            hops = []
            for h in u["hops"]:
                vn = h["vpn_node"]
                if vn is None or any(up[f"{t['node']}/{t['conn']}"] and any(
                        ipaddress.ip_network(u["dst"]).subnet_of(ipaddress.ip_network(p))  # type: ignore[arg-type]
                        for p in t["prefixes"]) for t in self.plan["tunnels"] if t["node"] == vn):
                    hops.append(("via", h["via"], h["dev"], h["weight"]))
            want[key] = tuple(hops)
        return want

    @staticmethod
    def _apply(key: tuple, hops: tuple) -> None:
        ns, table, dst, metric = key
        with ipr_in(ns) as ipr:
            base: dict[str, Any] = {"dst": dst, "table": table}
            if metric is not None:
                base["priority"] = metric
            nh = []
            for h in hops:
                if h[0] == "dev":
                    idx = ipr.link_lookup(ifname=h[1])
                    if not idx:  # tun not there (yet): retried next pass
                        raise LookupError(f"no device {h[1]}")
                    nh.append({"oif": idx[0]})
                else:
                    hop: dict[str, Any] = {"gateway": h[1], "hops": h[3] - 1}
                    if h[2]:
                        hop["oif"] = ipr.link_lookup(ifname=h[2])[0]
                    nh.append(hop)
            if not nh:
                try:
                    ipr.route("del", **base)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            elif len(nh) == 1:
                ipr.route("replace", **base, **{k: v for k, v in nh[0].items() if k != "hops"})
            else:
                ipr.route("replace", **base, multipath=nh)

    def step(self) -> bool:
        up = self.poll()
        want = self.desired(up)
        self.passes += 1
        refresh = self.passes % REFRESH_PASSES == 0  # re-assert all: a tun that came back lost its routes
        for key, hops in want.items():
            if refresh and self.applied.get(key) == hops:
                try:
                    self._apply(key, hops)
                except Exception:  # noqa: BLE001 - handled as a change next pass
                    self.applied.pop(key, None)
                continue
            if self.applied.get(key) != hops:
                try:
                    self._apply(key, hops)
                except Exception as exc:  # noqa: BLE001 - netns gone (lab down) or a dev just vanished
                    print(f"{time.strftime('%H:%M:%S')} route {key[0]} {key[2]}: {exc}", flush=True)
                    continue
                self.applied[key] = hops
                self.changes += 1
                desc = ", ".join(h[1] for h in hops) or "withdrawn"
                print(f"{time.strftime('%H:%M:%S')} {key[0]} table {key[1]} {key[2]} -> {desc}", flush=True)
        status = {"pid": os.getpid(), "time": time.time(), "tunnels": up, "applied": True,
                  "routes": [{"netns": k[0], "table": k[1], "dst": k[2], "metric": k[3], "nexthops": [h[1] for h in v]}
                             for k, v in sorted(self.applied.items(), key=str)]}
        tmp = self.dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, self.dir / STATUS_FILE)
        return True


def agent_main(lab_dir: str) -> int:
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    d = Path(lab_dir)
    try:
        agent = Agent(d)
    except (OSError, ValueError) as exc:
        print(f"vpn route agent: cannot read the plan in {d}: {exc}", file=sys.stderr)
        return 1
    print(f"{time.strftime('%H:%M:%S')} vpn route agent pid {os.getpid()} for lab {agent.plan['lab']}", flush=True)
    while not stop and d.is_dir():
        try:
            agent.step()
        except OSError as exc:  # state dir removed under us (lab down)
            if not d.is_dir():
                break
            print(f"agent pass failed: {exc}", flush=True)
        time.sleep(POLL)
    return 0



# ---------------------------------------------------------------- tunnel status and smoke check


def tunnel_status(state: LabState) -> list[dict[str, Any]]:
    """One entry per (VPN node, connection): state, SPIs, byte/packet counters, tunnel device.

    Asks each ipsecemu gateway (``list_sas`` on its control socket) and each charon (vici)."""
    from ipsecemu.gateway.control import ControlError, request

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
            from .strongswan import Charon

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


def _run(ns: str, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


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
    prot = _host_in(topo, list(c.routes_of(resp)), set())
    remote = _host_in(topo, list(c.routes_of(init)), set())
    if prot is None or remote is None:
        return None
    all_vpn = [p for v in topo.vpn for n in v.nodes for p in v.routes_of(n)]
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
    from .capture import Capture, CaptureError, pcap_flows

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
        srv = subprocess.Popen(["ip", "netns", "exec", rns, "iperf3", "-s", "-p", "5201"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
            if srv.poll() is None:
                os.kill(srv.pid, signal.SIGTERM)
            try:
                srv.wait(3)
            except subprocess.TimeoutExpired:
                os.kill(srv.pid, signal.SIGKILL)
                srv.wait()
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




if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(agent_main(sys.argv[2]))
    print("usage: python -m ipsecemu.lab.svc_vpn agent LAB_STATE_DIR", file=sys.stderr)
    sys.exit(2)
