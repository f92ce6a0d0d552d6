"""Failure drills on a running lab, without ``kill -9``: impair a link (its element's control
socket), take a link end down/up, stop/start/restart the daemons of a node (ipsecemu gateway,
charon, MACsec link ends, and whatever else the lab recorded for the node, e.g. routing daemons).

Processes are stopped by recorded PID (:func:`ipsecemu.net.proc.stop_pids`); a stopped node's
process entries move to ``stopped`` in the lab state so ``start`` can run the same command lines
again (charon, which is fed its connections over vici, is started again from the compiled plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import LabError
from ipsecemu.net.netns import ipr_in
from ipsecemu.net.proc import pid_alive, stop_pids
from ipsecemu.net.proc import start as start_process

from .impair_ctl import find, request
from .impair_schema import DIRECTIONS, ImpairDir, ImpairValueError, apply_values, format_dir
from .state import LabState

__all__ = ["DrillError", "impair", "link_set", "node_start", "node_stop", "wait_tunnels"]

Say = Callable[[str], None]


class DrillError(LabError):
    """A one-line user error of a drill command."""


# ---------------------------------------------------------------- impair


def impair(state: LabState, endpoint: str, values: dict[str, str], direction: str = "both",
           clear: bool = False) -> dict[str, Any]:
    """Change the impairment of the link with end ``endpoint`` (``NODE:IFACE``): ``values`` (setting ->
    text, e.g. ``{"delay": "20ms"}``) on top of the current settings, or everything off with ``clear``.
    ``direction``: ``out`` (from this end), ``in`` (towards it) or ``both``.  Returns the daemon's answer."""
    control, end, _info = find(state, endpoint)
    cur = request(control, {"op": "get"})
    out_dir = DIRECTIONS[end]  # endpoints[0] sends a_to_b
    in_dir = DIRECTIONS[1 - end]
    which = {"out": [out_dir], "in": [in_dir], "both": [out_dir, in_dir]}[direction]
    req: dict[str, Any] = {"op": "set"}
    for d in which:
        base = ImpairDir() if clear else ImpairDir.from_json(cur[d]["config"])
        try:
            req[d] = apply_values(base, values).to_json()
        except ImpairValueError as exc:
            raise DrillError(f"lab impair {endpoint}: --{exc}") from None
    return request(control, req)


def describe(state: LabState, endpoint: str, answer: dict[str, Any]) -> list[str]:
    """``FROM -> TO: settings`` per direction of the link with end ``endpoint``."""
    _control, _end, info = find(state, endpoint)
    lines = []
    for i, d in enumerate(DIRECTIONS):
        a, b = info["ends"][i], info["ends"][1 - i]
        lines.append(f"{a[0]}:{a[1]} -> {b[0]}:{b[1]}: {format_dir(ImpairDir.from_json(answer[d]['config']))}")
    return lines


# ---------------------------------------------------------------- link


def link_set(state: LabState, endpoint: str, up: bool) -> None:
    """``NODE:IFACE`` administratively down/up.  On an impaired link the element's side facing the
    peer follows, so the peer loses carrier as it would on a plain veth (a cut link)."""
    node, _, iface = endpoint.partition(":")
    ns = state.node_netns(node)
    if ns is None or not iface:
        raise DrillError(f"{endpoint}: expected NODE:IFACE of lab {state.name} "
                         f"(nodes: {', '.join(state.data.get('nodes', {}))})")
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=iface)
        if not idx:
            raise DrillError(f"{endpoint}: node {node} has no interface {iface}")
        ipr.link("set", index=idx[0], state="up" if up else "down")
    for info in (state.data.get("impair") or {}).values():
        for i, (n, f, *_rest) in enumerate(info["ends"]):
            if (n, f) == (node, iface) and "netns" in info:
                with ipr_in(info["netns"]) as ipr:
                    far = ipr.link_lookup(ifname=info["sides"][1 - i])
                    if far:
                        ipr.link("set", index=far[0], state="up" if up else "down")


# ---------------------------------------------------------------- node


def _node_procs(state: LabState, node: str) -> list[dict[str, Any]]:
    return [p for p in state.data.get("processes", []) if p.get("node") == node and p.get("role") != "capture"]


def node_stop(state: LabState, node: str) -> list[dict[str, Any]]:
    """Stop every recorded daemon of ``node`` (SIGTERM, bounded wait, SIGKILL); returns them."""
    if node not in state.data.get("nodes", {}):
        raise DrillError(f"lab {state.name} has no node '{node}'")
    procs = _node_procs(state, node)
    stop_pids([(p["pid"], p.get("start_time")) for p in procs])
    with state.update() as d:
        pids = {p["pid"] for p in procs}
        d["processes"] = [p for p in d["processes"] if p["pid"] not in pids]
        stopped = d.setdefault("stopped", {}).setdefault(node, [])
        stopped.extend(p for p in procs if p.get("cmd"))
    return procs


def node_start(state: LabState, node: str, say: Say) -> list[int]:
    """Start the daemons a ``node_stop`` stopped, in their original order; returns the new PIDs."""
    stopped = list((state.data.get("stopped") or {}).get(node, []))
    if not stopped:
        live = [p["pid"] for p in _node_procs(state, node) if pid_alive(p["pid"], p.get("start_time"))]
        if live:
            raise DrillError(f"node {node} is running (pids {', '.join(map(str, live))}): nothing to start")
        raise DrillError(f"node {node} has no stopped daemons to start")
    pids = []
    for p in stopped:
        if p["cmd"] == ["charon"]:
            pids.append(_start_charon(state, node))
        else:
            log = p.get("log") or str(state.dir / node / "restart.log")
            with open(log, "ab") as f:
                proc = start_process(p["cmd"], stdout=f, stderr=f)
            state.add_process(proc.pid, p["role"], node, p["cmd"], log)
            pids.append(proc.pid)
        say(f"node {node}: started {_what(p)} pid {pids[-1]}")
    with state.update() as d:
        (d.get("stopped") or {}).pop(node, None)
    return pids


def _what(p: dict[str, Any]) -> str:
    cmd = " ".join(p["cmd"])
    for key, name in (("gateway", "ipsecemu gateway"), ("macsec link", "MACsec link end"), ("charon", "charon"),
                      ("route_agent", "route agent")):
        if key in cmd:
            return name
    return Path(p["cmd"][0]).name


def _start_charon(state: LabState, node: str) -> int:
    # lazy: charon needs the compiled plan (its connections go in over vici); only this drill pays for it
    from . import svc_vpn, topology  # lazy: the plan compiler and strongSwan modules, only for charon
    from .plan import CHARON, compile_plan  # lazy: as above

    topo = topology.load(state.data["source"], name=state.name)
    plan = compile_plan(topo, base=state.dir.parent)
    d = next((x for x in plan.node(node).daemons if x.kind == CHARON), None)
    if d is None:
        raise DrillError(f"node {node}: the lab file no longer has a charon for it")
    _what_, pid, _log = svc_vpn._start_charon(plan, state, d)
    return pid


def wait_tunnels(state: LabState, node: str, timeout: float) -> float | None:
    """Seconds until every tunnel of ``node`` is established again with a Child SA (None: not within timeout)."""
    from . import svc_vpn  # lazy: strongSwan/vici modules, only for VPN nodes

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        mine = [t for t in svc_vpn.tunnel_status(state) if t["node"] == node]
        if mine and all(t.get("state") == "ESTABLISHED" and t.get("child_sas") for t in mine):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None
