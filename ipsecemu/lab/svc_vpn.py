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


def gateway_config(topo: Topology, node: str, state_dir: Path) -> dict[str, Any]:
    """``ipsecemu gateway run`` config (see ipsecemu.gateway.config) for an ipsecemu node."""
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
    from ipsecemu.ike.config import parse_connection

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
                   else str(node_dir(state, node) / "run" / "charon.vici"))
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
    return {"lab": topo.name, "tunnels": tunnels, "upstream": upstream}


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
            watch.append((f"{node}: gateway daemon", proc.pid, d / "gateway.log"))
            say(f"vpn: {node}: ipsecemu gateway pid {proc.pid} ({len(node_conns(topo, node))} tunnel(s))")
        else:
            from .strongswan import Charon, CharonError

            ch = Charon(topo.netns(node), d, key_log=True, extra_conf="charon {\n  install_routes = no\n}\n")
            try:
                ch.start()
                assert ch.pid is not None
                state.add_process(ch.pid, "daemon", node, ["charon"], str(ch.log_file))
                for c in node_conns(topo, node):
                    ch.load(charon_conn(topo, node, c))
            except CharonError as exc:
                if ch.pid is not None:
                    state.add_process(ch.pid, "daemon", node, ["charon"], str(ch.log_file))
                raise BuildError(f"{node}: strongSwan: {str(exc).splitlines()[0]}") from None
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
                    if idx:
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
        for key, hops in want.items():
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
                  "routes": [{"netns": k[0], "table": k[1], "dst": k[2], "nexthops": [h[1] for h in v]}
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        sys.exit(agent_main(sys.argv[2]))
    print("usage: python -m ipsecemu.lab.svc_vpn agent LAB_STATE_DIR", file=sys.stderr)
    sys.exit(2)
