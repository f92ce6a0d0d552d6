"""``lab audit --failures``: the audit under every single failure the lab can take, one at a time.

The failures: each VPN gateway instance down (the responder side of a connection, as Azure's
instances are: its daemon is frozen with SIGSTOP, so it stops forwarding and answering, and the
route agent withdraws its routes as VPN BGP would; SIGCONT restores it), all of them at once (the
VPN gateway down: where ExpressRoute carries the same prefixes, the traffic falls back to it), each
tunnel terminated (an operator's ``terminate`` on one end, ``initiate`` to restore), each ER link
down (every link with an untrusted end, and every link between two routers: its veth is set down at
one end, the untrusted one if any) and each MACsec link down (the MACsec link daemon of one end is
frozen with SIGSTOP: no frame crosses, its peer loses it at the MKA timeout; SIGCONT restores it
and MKA secures the link again: a new SAK under the next AN).  The link daemon also survives its
phy going down and re-secures the link when it comes back; the freeze stays the failure because it
is the harsher one (the peer must time out, not just see carrier loss).

One generic model, so that it holds for static labs and for labs whose routing protocol (FRR/BGP,
BFD) reacts by itself: apply; wait until the lab is stable (the failure's own condition, e.g. the
route agent shows the tunnel down; in a BGP lab the BGP sessions it touches down, read from FRR by
lab/converge.py; then routes and tunnel states unchanged for ``QUIET_S``, all bounded by
``CONVERGE_S``); audit; restore; wait again.  Each cell of the matrix is the verdict from
the packets (ipsecemu.lab.audit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.errors import ConfigError, LabError
from ipsecemu.gateway.control import ControlError, request
from ipsecemu.macsec_link.daemon import read_status as read_macsec_status

from .audit import AuditError, Report, run_audit
from .audit_classify import CLEAR, ENCRYPTED, NOT_DELIVERED
from .audit_schema import Audit
from .capture import CaptureError
from .converge import BgpWatch, is_bgp_lab
from .state import LabState, pid_alive
from .svc_macsec import status_path
from .svc_vpn import node_dir, read_status
from .topology import Link, Topology

CONVERGE_S = 20.0  # a failure or a restore must show (and the lab settle) within this
QUIET_S = 1.5  # stable = routes and tunnel states unchanged this long (BFD reacts within ~1 s)
POLL_S = 0.25
_RESTORED_PROTOS = ("boot", "static")  # route protocols an ER link restore puts back

INSTANCE, ALL_INSTANCES, TERMINATED, ER_LINK, MACSEC_LINK = (
    "instance down", "all instances down", "tunnel terminated", "ER link down", "MACsec link down")


class FailureError(LabError):
    """A failure could not be applied or restored (reported in its column, not raised out)."""


@dataclass
class LabFailure:
    name: str
    kind: str  # INSTANCE | ALL_INSTANCES | TERMINATED | ER_LINK | MACSEC_LINK
    node: str  # the node acted on (ALL_INSTANCES: the first of ``nodes``)
    conn: str | None = None
    down: tuple[str, ...] = ()  # route agent keys "node/conn" that read down while it is applied
    nodes: tuple[str, ...] = ()  # instances frozen together (ALL_INSTANCES)
    iface: str = ""  # the interface set down (ER_LINK, MACSEC_LINK), in ``node``'s netns
    pids: list[int] = field(default_factory=list)  # frozen daemons (instance down)
    saved_routes: list[bytes] = field(default_factory=list)  # ``ip route save`` v4, v6 x protos (ER link)
    links_before: dict[str, str] = field(default_factory=dict)  # every interface's operstate before it
    bgp: BgpWatch | None = None  # a BGP lab: its sign is read from FRR, not the route agent (lab/converge.py)


def _link_end(topo: Topology, lk: Link, untrusted: set[tuple[str, str]]) -> tuple[str, str]:
    """The end of ``lk`` to set down: the untrusted one if any (the ER side), else the first."""
    for ep in (lk.a, lk.b):
        if (ep.node, ep.iface) in untrusted:
            return ep.node, ep.iface
    return lk.a.node, lk.a.iface


def plan_failures(topo: Topology, audit: Audit | None = None) -> list[LabFailure]:
    out: list[LabFailure] = []
    responders = sorted({c.nodes[1] for c in topo.vpn})
    for node in responders:
        # its own end of each tunnel: the peer only notices at DPD, and keeps its tunnel meanwhile
        keys = tuple(f"{node}/{c.name}" for c in topo.vpn if node in c.nodes)
        out.append(LabFailure(f"{node} down", INSTANCE, node, down=keys, nodes=(node,)))
    if len(responders) > 1:  # the whole VPN gateway: what ER carries in clear meanwhile
        keys = tuple(f"{n}/{c.name}" for n in responders for c in topo.vpn if n in c.nodes)
        out.append(LabFailure("+".join(responders) + " down", ALL_INSTANCES, responders[0], down=keys,
                              nodes=tuple(responders)))
    for c in topo.vpn:
        end = next((n for n in c.nodes if topo.node(n).kind == "ipsecemu"), None)
        if end is None:  # charon on both ends: no terminate through our control socket
            continue
        out.append(LabFailure(f"{c.name} terminated", TERMINATED, end, c.name,
                              down=tuple(f"{n}/{c.name}" for n in c.nodes)))
    untrusted = set(audit.untrusted) if audit is not None else set()
    kinds = {n.name: n.kind for n in topo.nodes}
    macsec: list[LabFailure] = []
    for lk in topo.links:
        ends = {(lk.a.node, lk.a.iface), (lk.b.node, lk.b.iface)}
        node, iface = _link_end(topo, lk, untrusted)
        if lk.macsec is not None:  # its MKA/SecY end frozen: nothing crosses, the peer loses it at MKA timeout
            macsec.append(LabFailure(f"MACsec {node}:{iface} down", MACSEC_LINK, node, iface=iface))
        elif ends & untrusted or (kinds[lk.a.node] == "router" and kinds[lk.b.node] == "router"):
            out.append(LabFailure(f"link {node}:{iface} down", ER_LINK, node, iface=iface))
    # last: a MACsec link is not secured again after the resume today (see the module docstring),
    # so the columns before them run on an intact lab
    return out + macsec


def _daemons(state: LabState, node: str, tap: str | None = None) -> list[int]:
    """Live daemons of ``node``: its VPN gateway/charon, or with ``tap`` the MACsec link end on it."""
    state.reload()
    out = []
    for p in state.data.get("processes", []):
        if p.get("node") != node or p.get("role") != "daemon" or not pid_alive(p["pid"], p.get("start_time")):
            continue
        cmd = p.get("cmd") or []
        on_tap = cmd[cmd.index("--tap") + 1] if "--tap" in cmd[:-1] else None
        if on_tap == tap:
            out.append(p["pid"])
    return out


def _macsec_secured(topo: Topology, state: LabState, since: float) -> bool:
    """Every MACsec link end wrote a status after ``since`` saying MKA secured it with a live peer."""
    for lk in topo.links:
        if lk.macsec is None:
            continue
        for ep in (lk.a, lk.b):
            path = status_path(state, ep.node, ep.iface)
            try:
                if path.stat().st_mtime <= since:
                    return False
                st = read_macsec_status(path)
            except (OSError, ConfigError):
                return False
            if not (st.get("secured") and st.get("live_peers")):
                return False
    return True


Tunnels = dict[str, bool]


def _snapshot(topo: Topology, state: LabState) -> tuple[Any, ...]:
    """What must stop changing for the lab to count as converged: every node's routes (all
    tables, both families; 'dead'/'linkdown' flags included) and the tunnels' up/down states."""
    routes = []
    for n in topo.nodes:
        for fam in ("-4", "-6"):
            res = subprocess.run(["ip", "-n", topo.netns(n.name), fam, "route", "show", "table", "all"],
                                 capture_output=True, text=True, timeout=5, check=False)
            routes.append(res.stdout)
    tunnels = read_status(state).get("tunnels") or {}
    return (tuple(routes), tuple(sorted(tunnels.items())))


def link_states(topo: Topology) -> dict[str, str]:
    """``{"node:iface": operstate}`` of every node (a MACsec tap is UP only once MKA secured it)."""
    out: dict[str, str] = {}
    for n in topo.nodes:
        res = subprocess.run(["ip", "-n", topo.netns(n.name), "-j", "link", "show"], capture_output=True,
                             text=True, timeout=5, check=False)
        try:
            for lk in json.loads(res.stdout or "[]"):
                out[f"{n.name}:{lk.get('ifname')}"] = str(lk.get("operstate"))
        except ValueError:
            continue
    return out


def wait_stable(topo: Topology, state: LabState, pred: Callable[[Tunnels], bool] | None, since: float,
                timeout: float = CONVERGE_S, links: dict[str, str] | None = None) -> bool:
    """Bounded wait: until the route agent's view (published after ``since``) satisfies ``pred`` (if
    the lab has VPN tunnels) and, with ``links`` (a restore), every interface is back in that
    operstate and every MACsec link secured again; then until routes and tunnel states stay
    unchanged for ``QUIET_S``."""
    deadline = time.monotonic() + timeout
    while links is not None and (link_states(topo) != links or not _macsec_secured(topo, state, since)):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    if pred is not None and topo.vpn:
        while True:
            st = read_status(state)
            if st.get("time", 0) > since and pred(st.get("tunnels") or {}):
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
    last, quiet_since = _snapshot(topo, state), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        snap = _snapshot(topo, state)
        if snap != last:
            last, quiet_since = snap, time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S:
            return True
    return False


def _ip(topo: Topology, node: str, *args: str, stdin: bytes | None = None) -> bytes:
    with tempfile.TemporaryFile() as f:  # 'ip route restore' wants a seekable stdin
        if stdin is not None:
            f.write(stdin)
            f.seek(0)
        res = subprocess.run(["ip", "-n", topo.netns(node), *args], stdin=f if stdin is not None else None,
                             capture_output=True, timeout=10, check=False)
    # 'route restore' reports each route that is still there ("File exists") and goes on
    if res.returncode != 0:
        raise FailureError(f"ip {' '.join(args)} in {node}: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def apply(topo: Topology, state: LabState, f: LabFailure) -> bool:
    """Apply ``f``; True once the lab is stable with it (see ``wait_stable``)."""
    t0 = time.time()
    f.links_before = link_states(topo)
    f.bgp = None
    if is_bgp_lab(state):  # baseline before acting
        f.bgp = BgpWatch.start(topo, state, f.nodes if f.kind in (INSTANCE, ALL_INSTANCES) else (),
                               f.conn if f.kind == TERMINATED else None, (f.node, f.iface) if f.iface else None)
    pred: Callable[[Tunnels], bool] | None = lambda up: not any(up.get(k) for k in f.down)  # noqa: E731
    if f.kind in (INSTANCE, ALL_INSTANCES, MACSEC_LINK):
        f.pids = ([pid for n in f.nodes for pid in _daemons(state, n)] if f.kind != MACSEC_LINK
                  else _daemons(state, f.node, tap=f.iface))
        if not f.pids:
            raise FailureError(f"no running daemon on {', '.join(f.nodes or (f'{f.node}:{f.iface}',))}")
        for pid in f.pids:
            os.kill(pid, signal.SIGSTOP)
        if f.kind == MACSEC_LINK:
            pred = None  # no tunnel needs to go down: IPsec rides over the MACsec links
    elif f.kind == TERMINATED:
        try:
            request(node_dir(state, f.node) / "control.sock", "terminate", timeout=5.0, target=f.conn)
        except (ControlError, OSError) as exc:
            raise FailureError(f"terminate {f.conn} on {f.node}: {exc}") from None
    else:  # an interface set down loses its routes for good: keep the configured ones to restore
        # (boot/static: the lab's own and the route agent's; a routing daemon re-announces its own)
        f.saved_routes = [_ip(topo, f.node, fam, "route", "save", "table", "all", "proto", proto)
                          for fam in ("-4", "-6") for proto in _RESTORED_PROTOS]
        _ip(topo, f.node, "link", "set", "dev", f.iface, "down")
        pred = None  # which tunnels go down (if any) is the lab's business: just wait for stability
    if f.bgp is not None:
        return f.bgp.wait_applied(lambda: _snapshot(topo, state), QUIET_S, time.monotonic() + CONVERGE_S)
    return wait_stable(topo, state, pred, t0)


def restore(topo: Topology, state: LabState, f: LabFailure) -> bool:
    """Undo ``f``; True once every tunnel is up again and the lab is stable."""
    t0 = time.time()
    if f.kind in (INSTANCE, ALL_INSTANCES, MACSEC_LINK):
        for pid in f.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        f.pids = []
    elif f.kind == TERMINATED:
        try:
            request(node_dir(state, f.node) / "control.sock", "initiate", timeout=5.0, target=f.conn)
        except (ControlError, OSError) as exc:
            raise FailureError(f"initiate {f.conn} on {f.node}: {exc}") from None
    else:
        _ip(topo, f.node, "link", "set", "dev", f.iface, "up")
        fams = [fam for fam in ("-4", "-6") for _ in _RESTORED_PROTOS]
        for fam, saved in zip(fams, f.saved_routes, strict=False):
            if saved:
                _ip(topo, f.node, fam, "route", "restore", stdin=saved)
        f.saved_routes = []
    if f.bgp is not None:  # sessions Established and BGP routes back, then interfaces and MACsec as below
        end = time.monotonic() + CONVERGE_S
        ok = f.bgp.wait_restored(lambda: _snapshot(topo, state), QUIET_S, end)
        return wait_stable(topo, state, None, t0, max(end - time.monotonic(), QUIET_S + 1), f.links_before) and ok
    return wait_stable(topo, state, lambda up: bool(up) and all(up.values()), t0, links=f.links_before)


@dataclass
class Column:
    failure: str
    report: Report | None
    note: str = ""  # convergence problems, a failure that could not be applied

    def leaks(self) -> list[str]:
        """Probes expected encrypted that went clear under this failure."""
        if self.report is None:
            return []
        return [f"{p.src}->{p.dst} {p.flow.proto}" for p in self.report.probes
                if p.flow.expect == ENCRYPTED and p.observed == CLEAR]


def run_failures(topo: Topology, state: LabState, audit: Audit, only: tuple[str, ...] = ()) -> list[Column]:
    """The baseline audit, then one audit per single failure (applied, converged, audited, restored);
    ``only``: just the failures whose name contains one of these strings."""
    failures = [f for f in plan_failures(topo, audit) if not only or any(o in f.name for o in only)]
    if only and not failures:
        names = ", ".join(f.name for f in plan_failures(topo, audit)) or "none"
        raise FailureError(f"no failure of lab {topo.name} matches {', '.join(only)} (failures: {names})")
    cols = [Column("none", run_audit(topo, state, audit))]
    for f in failures:
        notes: list[str] = []
        report: Report | None = None
        try:
            try:
                if not apply(topo, state, f):
                    notes.append(f"not stable within {CONVERGE_S:.0f} s with the failure")
                try:
                    report = run_audit(topo, state, audit)
                except (AuditError, CaptureError) as exc:  # this column has no verdicts; the others go on
                    notes.append(f"audit: {exc}")
            finally:
                try:
                    if not restore(topo, state, f):
                        notes.append(f"not restored (tunnels up, stable) within {CONVERGE_S:.0f} s")
                except FailureError as exc:
                    notes.append(f"restore: {exc}")
        except FailureError as exc:
            notes.insert(0, str(exc))
        cols.append(Column(f.name, report, "; ".join(notes)))
    return cols


# the matrix speaks of the flow: "down" = sent (encrypted where seen) but no answer came back
_CELL = {NOT_DELIVERED: "down"}


def format_matrix(cols: list[Column]) -> list[str]:
    """Rows: probes; columns: failures; ``!`` marks a flow expected encrypted that went clear."""
    base = cols[0].report
    assert base is not None
    names = [f"{p.src}->{p.dst} {p.flow.proto}{f'/{p.port}' if p.port else ''} ({p.flow.expect})" for p in base.probes]
    w0 = max(len(n) for n in [*names, "FLOW"])
    widths = [max(len(c.failure), 14) for c in cols]
    out = ["  ".join(["FLOW".ljust(w0), *(c.failure.ljust(w) for c, w in zip(cols, widths, strict=True))])]
    for i, n in enumerate(names):
        cells = []
        for c, w in zip(cols, widths, strict=True):
            if c.report is None:
                cells.append("-".ljust(w))
                continue
            p = c.report.probes[i]
            mark = "!" if p.flow.expect == ENCRYPTED and p.observed == CLEAR else ""
            cells.append((_CELL.get(p.observed, p.observed) + mark).ljust(w))
        out.append("  ".join([n.ljust(w0), *cells]))
    for c in cols:
        if c.note:
            out.append(f"{c.failure}: {c.note}")
    leaks = [(c.failure, x) for c in cols for x in c.leaks()]
    out.append("down = not delivered (never seen in clear); blocked = not delivered, never seen on an untrusted link")
    out.append("! = expected encrypted, went clear: " + ("; ".join(f"{x} when {f}" for f, x in leaks) or "none"))
    return out


def matrix_dict(cols: list[Column]) -> dict[str, Any]:
    return {"failures": [{"failure": c.failure, "note": c.note, "leaks": c.leaks(),
                          "audit": c.report.as_dict() if c.report else None} for c in cols]}
