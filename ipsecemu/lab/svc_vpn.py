"""Lab service: the VPN gateways of a lab, and the route agent that stands in for VPN BGP.

``start(plan, state, say)`` runs after the network is built and starts what the plan
(:mod:`ipsecemu.lab.plan.vpn`) says:

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
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ipsecemu.gateway.control import ControlError, request
from ipsecemu.net.netns import ipr_in
from ipsecemu.net.proc import pid_alive
from ipsecemu.net.proc import start as start_process
from ipsecemu.strongswan.charon import Charon, CharonError

from . import hostpolicy_plan
from .errors import BuildError
from .plan import CHARON, GATEWAY, ROUTE_AGENT, Daemon, LabPlan, write_file
from .plan.render import daemon_argv
from .plan.vpn import CHARON_DEV, PLAN_FILE, STATUS_FILE

# what to run where is derived in ipsecemu.lab.plan.vpn; these stay importable from here
from .plan.vpn import gateway_config as gateway_config
from .plan.vpn import node_conns as node_conns
from .state import LabState

Say = Callable[[str], None]
UP_TIMEOUT = 45.0  # bounded wait for every tunnel at `lab up`
LISTEN_TIMEOUT = 15.0  # a responder gateway binds its IKE sockets within this (python start-up, 2 cores)
NO_SA = "NO SA"  # tunnel_status: the gateway answers, but has no IKE SA for the connection


def node_dir(state: LabState, node: str) -> Path:
    return state.dir / node


def charon_dir(state: LabState, node: str) -> Path:
    """A charon's instance dir, as recorded at start (outside /run: see state.CHARON_BASE)."""
    return state.charon_dir(node)


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


def _start_gateway(plan: LabPlan, state: LabState, d: Daemon) -> tuple[str, int, Path]:
    for f in d.files:
        write_file(state.dir, f)
    log = state.dir / d.log
    cmd = daemon_argv(d, plan)
    proc = _spawn(cmd, log)
    state.add_process(proc.pid, "daemon", d.node, cmd, str(log))
    return f"{d.node}: gateway daemon", proc.pid, log


def _start_charon(plan: LabPlan, state: LabState, d: Daemon) -> tuple[str, int, Path]:
    assert d.node is not None and d.run_dir is not None
    cdir = Path(d.run_dir)
    with state.update() as data:  # recorded first: `lab down` removes it (builder.teardown)
        data.setdefault("charon_dirs", {})[d.node] = str(cdir)
        extra = data.setdefault("extra_dirs", [])
        if str(cdir.parent) not in extra:
            extra.append(str(cdir.parent))
    for f in d.files:  # what is loaded over vici below, as swanctl.conf
        write_file(state.dir, f)
    shutil.rmtree(cdir, ignore_errors=True)
    cdir.mkdir(parents=True, mode=0o700)
    ns = plan.node(d.node).netns
    # a BGP CE: FRR routes into ipsec0, charon's updown keeps the BGP /32s (plan.vpn.bgp_updown)
    conf_extra = "" if d.info.get("install_routes", True) else "charon {\n  install_routes = no\n}\n"
    ch = Charon(ns, cdir, key_log=True, extra_conf=conf_extra)
    _add_bgp_addresses(ns, d.info.get("bgp_addresses") or [])
    try:
        ch.start()
        assert ch.pid is not None
        state.add_process(ch.pid, "daemon", d.node, ["charon"], str(ch.log_file))
        _drop_charon_rule(ns)
        for conn in d.conns:
            ch.load(conn)
    except CharonError as exc:
        if ch.pid is not None:
            state.add_process(ch.pid, "daemon", d.node, ["charon"], str(ch.log_file))
        raise BuildError(f"{d.node}: strongSwan: {exc}") from None
    return f"{d.node}: charon", ch.pid, ch.log_file


def start(plan: LabPlan, state: LabState, say: Say) -> None:
    agents = plan.daemons_of(ROUTE_AGENT)
    if not agents and not any(n.tunnels for n in plan.nodes):
        return
    watch: list[tuple[str, int, Path]] = []  # (what, pid, log) checked while waiting
    vpn = [d for d in plan.all_daemons() if d.kind in (GATEWAY, CHARON)]
    # Responders first, and listening, before any initiator starts: an IKE_SA_INIT sent to a port
    # nobody has bound yet is lost, and the initiator only retries after its 1 s... 4 s backoff.
    responders = [d for d in vpn if not d.info.get("initiates")]
    initiators = [d for d in vpn if d.info.get("initiates")]
    for group in (responders, initiators):
        started = [_start_vpn_daemon(plan, state, d, say) for d in group]
        watch += [w for w, _ in started]
        if group is responders and initiators:
            _wait_listening(state, [(d, w) for d, w in zip(group, (w for w, _ in started), strict=True)])
    if not agents:  # BGP lab (routing:): FRR moves the routes; wait for the SAs themselves
        _wait_sas(state, plan, watch, say)
        return
    agent = agents[0]
    for f in agent.files:  # vpn-plan.json: what the agent watches
        write_file(state.dir, f)
    log = state.dir / agent.log
    cmd = daemon_argv(agent, plan)
    proc = _spawn(cmd, log)
    state.add_process(proc.pid, "daemon", None, cmd, str(log))
    watch.append(("VPN route agent", proc.pid, log))
    _wait_up(state, plan, watch, say)


def _start_vpn_daemon(plan: LabPlan, state: LabState, d: Daemon, say: Say) -> tuple[tuple[str, int, Path], Daemon]:
    if d.kind == GATEWAY:
        w = _start_gateway(plan, state, d)
        say(f"vpn: {d.node}: ipsecemu gateway pid {w[1]} ({d.info['tunnels']} tunnel(s))")
    else:
        w = _start_charon(plan, state, d)  # returns once charon listens and has its connections
        say(f"vpn: {d.node}: strongSwan charon pid {w[1]} ({d.info['tunnels']} connection(s))")
    return w, d


def _wait_listening(state: LabState, started: list[tuple[Daemon, tuple[str, int, Path]]]) -> None:
    """Until every responder gateway answers on its control socket, which it opens only after
    binding its IKE sockets (gateway.daemon._main).  Bounded; a daemon that dies fails lab up."""
    deadline = time.monotonic() + LISTEN_TIMEOUT
    for d, (what, pid, log) in started:
        if d.kind != GATEWAY:
            continue
        sock = node_dir(state, str(d.node)) / "control.sock"
        while True:
            if not pid_alive(pid, None):
                raise BuildError(f"{what} (pid {pid}) exited during start; last log lines:\n    {_tail(log)}")
            try:
                request(sock, "counters", timeout=1.0)
                break
            except (ControlError, OSError, ValueError):
                if time.monotonic() > deadline:
                    raise BuildError(f"{what} (pid {pid}) does not answer on {sock} after {LISTEN_TIMEOUT:.0f} s "
                                     f"(log {log})") from None
                time.sleep(0.02)


def _add_bgp_addresses(ns: str, addrs: list[str]) -> None:
    """The CE's BGP addresses inside the tunnels, on lo before charon starts: libipsec installs a
    CHILD_SA only when its local TS (which holds that /32, plan.vpn.bgp_selectors) has a local address."""
    if not addrs:
        return
    with ipr_in(ns) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for a in addrs:
            ipr.addr("replace", index=lo, address=a, prefixlen=32)


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


def _wait_up(state: LabState, plan: LabPlan, watch: list[tuple[str, int, Path]], say: Say) -> None:
    t0 = time.monotonic()
    last_say = t0
    want = {f"{n.name}/{t.conn}" for n in plan.nodes for t in n.tunnels}
    while True:
        for what, pid, log in watch:
            if not pid_alive(pid, None):
                raise BuildError(f"{what} (pid {pid}) exited during start; last log lines:\n    {_tail(log)}")
        st = read_status(state)
        up = {k for k, v in (st.get("tunnels") or {}).items() if v}
        if st.get("applied") and want <= up:
            say(f"vpn: {len(want) // 2} tunnel(s) up in {time.monotonic() - t0:.1f} s, "
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


def _wait_sas(state: LabState, plan: LabPlan, watch: list[tuple[str, int, Path]], say: Say) -> None:
    """Without a route agent: every tunnel end has an installed Child SA (asked from each gateway)."""
    t0 = time.monotonic()
    last_say = t0
    want = {(n.name, t.conn) for n in plan.nodes for t in n.tunnels}
    while True:
        for what, pid, log in watch:
            if not pid_alive(pid, None):
                raise BuildError(f"{what} (pid {pid}) exited during start; last log lines:\n    {_tail(log)}")
        up = {(t["node"], t["conn"]) for t in tunnel_status(state)
              if "error" not in t and any(c["state"] == "INSTALLED" for c in t["child_sas"])}
        if want <= up:
            say(f"vpn: {len(want) // 2} tunnel(s) up in {time.monotonic() - t0:.1f} s (routes: BGP)")
            return
        now = time.monotonic()
        if now - t0 > UP_TIMEOUT:
            missing = ", ".join(sorted(f"{n}/{c}" for n, c in want - up))
            raise BuildError(f"VPN tunnels not up within {UP_TIMEOUT:.0f} s: {missing} "
                             f"(logs in {state.logs_dir} and {state.dir}/<node>/)")
        if now - last_say >= 3:
            say(f"vpn: waiting for tunnels ({len(up & want)}/{len(want)} sides up, {now - t0:.0f} s)")
            last_say = now
        time.sleep(0.2)


def read_status(state: LabState) -> dict[str, Any]:
    """The route agent's last published view (``{}`` before its first pass)."""
    try:
        status: dict[str, Any] = json.loads((state.dir / STATUS_FILE).read_text())
        return status
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- tunnel status


HOST_GATEWAY_FILE = hostpolicy_plan.GATEWAY_FILE  # a policy host's gateway config (S5)


def has_host_gateways(state: LabState) -> bool:
    """Whether a host of the lab runs an IPsec policy gateway (scenario S5)."""
    return any((state.dir / n / HOST_GATEWAY_FILE).exists() for n in (state.data.get("nodes") or {}))


def tunnel_status(state: LabState) -> list[dict[str, Any]]:
    """One entry per (VPN node, connection): state, SPIs, byte/packet counters, tunnel device.

    Asks each ipsecemu gateway (``list_sas`` on its control socket) and each charon (vici)."""
    out: list[dict[str, Any]] = []
    for node, kind in (state.data.get("nodes") or {}).items():
        if kind == "host" and (state.dir / node / HOST_GATEWAY_FILE).exists():
            kind = "ipsecemu"  # a host's IPsec policy agent (S5) is an ipsecemu gateway too
        if kind == "ipsecemu":
            sock = state.dir / node / "control.sock"
            if not any((state.dir / node / f).exists() for f in ("gateway.yaml", HOST_GATEWAY_FILE)):
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
    return out + _without_sa(state, out)


def _without_sa(state: LabState, seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A gateway that answers but has no SA for one of its connections (after ``sa terminate``,
    or while IKE retries) still shows, as state ``NO SA``: silence would read as "no gateway"."""
    try:
        plan = json.loads((state.dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        plan = {"tunnels": _gateway_tunnels(state)}  # BGP labs have no route agent (and no plan file)
    have = {(e["node"], e.get("conn")) for e in seen}
    failed = {e["node"] for e in seen if "error" in e}
    out = []
    for t in plan.get("tunnels", []):
        node, conn = t.get("node"), t.get("conn")
        if node in failed or (node, conn) in have:
            continue
        if t.get("kind") == "ipsecemu" and not (state.dir / str(node) / "gateway.yaml").exists():
            continue  # not started (yet)
        out.append({"node": node, "kind": t.get("kind"), "conn": conn, "state": NO_SA, "local": None,
                    "remote": None, "child_sas": []})
    return out


def _gateway_tunnels(state: LabState) -> list[dict[str, Any]]:
    """The connections of every ipsecemu gateway of the lab, from the configs ``lab up`` wrote."""
    out = []
    for cfg in sorted(state.dir.glob("*/gateway.yaml")):
        try:
            conns = (yaml.safe_load(cfg.read_text()) or {}).get("connections") or {}
        except (OSError, yaml.YAMLError):
            continue
        out += [{"node": cfg.parent.name, "kind": "ipsecemu", "conn": str(c)} for c in conns]
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
