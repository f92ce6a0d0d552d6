"""Lab service: host IPsec policies (S5) and the hosts' HTTP servers, from the plan
(:mod:`ipsecemu.lab.hostpolicy_plan`).

Per policy host, in this order: the steering (``ip rule``s, prohibit routes, the ``local`` rule
moved), so that a ``require`` rule refuses cleartext before any gateway runs; then its ipsecemu
gateway (``gateway run`` on the generated ``host-ipsec.yaml``), waited for until its control socket
answers (its IKE sockets are bound by then).  Then each ``http:`` port's ``python -m http.server``
serving ``<lab dir>/<node>/www``.  Every process is recorded in the lab state before anything waits
on it, so ``lab down`` (and the rollback of a failed ``lab up``) stops it by PID.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import NetlinkError

from ipsecemu.gateway.control import ControlError, request
from ipsecemu.net.netns import entered, ipr_in
from ipsecemu.net.proc import pid_alive
from ipsecemu.net.proc import start as start_process

from .errors import BuildError
from .hostpolicy_plan import HOST_GATEWAY, HTTP, LOCAL_PREF, SteerRoute, SteerRule
from .plan import Daemon, LabPlan, write_file
from .plan.render import daemon_argv
from .state import LabState

Say = Callable[[str], None]
LISTEN_TIMEOUT = 15.0  # a gateway binds its IKE sockets within this (python start-up, 2 shared cores)


def rule_args(r: SteerRule) -> dict[str, Any]:
    """pyroute2 ``rule('add', ...)`` arguments of one steering rule."""
    kw: dict[str, Any] = {"family": 2, "priority": r.priority}
    for key, net in (("src", r.src), ("dst", r.dst)):
        if net:
            n = ipaddress.ip_network(net)
            kw[key], kw[f"{key}_len"] = str(n.network_address), n.prefixlen
    if r.iif:
        kw["iifname"] = r.iif
    if r.protocol:
        kw["ip_proto"] = r.protocol
    if r.sport is not None:
        kw["sport_range"] = f"{r.sport}:{r.sport}"
    if r.dport is not None:
        kw["dport_range"] = f"{r.dport}:{r.dport}"
    if r.table is None:
        kw["action"] = "FR_ACT_PROHIBIT"
    else:
        kw["table"] = r.table
    return kw


def steer(netns: str, rules: tuple[SteerRule, ...], routes: tuple[SteerRoute, ...]) -> None:
    """Install one host's steering: prohibit routes, the local rule moved after the inbound rules, the rules."""
    if not rules:
        return
    with ipr_in(netns) as ipr:
        try:
            for rt in routes:
                n = ipaddress.ip_network(rt.dst)
                ipr.route("add", dst=str(n.network_address), dst_len=n.prefixlen, table=rt.table, type="prohibit",
                          priority=rt.metric)
            # inbound prohibits must be seen before `lookup local` delivers the packet: move that rule
            ipr.rule("add", family=2, priority=LOCAL_PREF, table=255)
            ipr.rule("del", family=2, priority=0, table=255)
            for r in rules:
                ipr.rule("add", **rule_args(r))
        except NetlinkError as exc:
            raise BuildError(f"{netns}: host IPsec steering: netlink: {exc.args[-1]}") from None


def _spawn(plan: LabPlan, state: LabState, d: Daemon) -> tuple[int, Path]:
    for f in d.files:
        write_file(state.dir, f)
    log = state.dir / d.log
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = daemon_argv(d, plan)
    with open(log, "ab") as out:  # own session: rollback and `lab down` stop it by PID
        proc = start_process(cmd, stdout=out, stderr=subprocess.STDOUT)
    state.add_process(proc.pid, "daemon", d.node, cmd, str(log))
    return proc.pid, log


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "(no log)"
    return "\n    ".join(lines) or "(empty log)"


def _wait(what: str, pid: int, log: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while not ready():
        if not pid_alive(pid, None):
            raise BuildError(f"{what} (pid {pid}) exited during start; last log lines:\n    {_tail(log)}")
        if time.monotonic() > deadline:
            raise BuildError(f"{what} (pid {pid}) not ready after {LISTEN_TIMEOUT:.0f} s (log {log})")
        time.sleep(0.05)


def _gateway_answers(sock: Path) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            request(sock, "counters", timeout=1.0)
            return True
        except (ControlError, OSError, ValueError):
            return False
    return ready


def _listening(netns: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with entered(netns), socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0
    return ready


def start(plan: LabPlan, state: LabState, say: Say) -> None:
    gateways, servers = plan.daemons_of(HOST_GATEWAY), plan.daemons_of(HTTP)
    for d in gateways:
        assert d.node is not None
        steer(plan.node(d.node).netns, d.info["rules"], d.info["routes"])
        say(f"host ipsec: {d.node}: {len(d.info['rules'])} steering rule(s), {len(d.info['routes'])} prohibit route(s)")
    started = []
    for d in gateways:
        if d.argv:
            pid, log = _spawn(plan, state, d)
            started.append((d, pid, log))
            say(f"host ipsec: {d.node}: gateway pid {pid} ({d.info['connections']} connection(s), on demand)")
    for d, pid, log in started:
        _wait(f"{d.node}: host IPsec gateway", pid, log, _gateway_answers(state.dir / str(d.node) / "control.sock"))
    for d in servers:
        assert d.node is not None
        pid, log = _spawn(plan, state, d)
        _wait(f"{d.node}: HTTP server on {d.info['port']}", pid, log, _listening(plan.node(d.node).netns, d.info["port"]))
    if servers:
        say(f"http: {len(servers)} server(s): " + ", ".join(f"{d.node}:{d.info['port']}" for d in servers))
