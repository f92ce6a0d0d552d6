"""``lab audit --failures``: the audit under every single failure the lab can take, one at a time.

Covered so far: each VPN gateway instance down (the responder side of a connection, as Azure's
instances are: its daemon is frozen with SIGSTOP, so it stops forwarding and answering, and the
route agent withdraws its routes as VPN BGP would; SIGCONT restores it) and each tunnel terminated
(an operator's ``terminate`` on one end, ``initiate`` to restore).  After applying a failure the lab
must converge: the route agent reports the affected tunnels down; after restoring: every tunnel up.
Each cell of the matrix is the verdict from the packets (ipsecemu.lab.audit).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.errors import LabError
from ipsecemu.gateway.control import ControlError, request

from .audit import Report, run_audit
from .audit_classify import CLEAR, ENCRYPTED
from .audit_schema import Audit
from .state import LabState, pid_alive
from .svc_vpn import node_dir, read_status
from .topology import Topology

CONVERGE_S = 20.0  # a failure or a restore must show in the route agent within this
SETTLE_S = 1.0  # then routes get this long to be applied


class FailureError(LabError):
    """A failure could not be applied or restored (reported in its column, not raised out)."""


@dataclass
class LabFailure:
    name: str
    kind: str  # "instance down" | "tunnel terminated"
    node: str
    conn: str | None = None
    down: tuple[str, ...] = ()  # route agent keys "node/conn" that read down while it is applied
    pids: list[int] = field(default_factory=list)  # frozen daemons (instance down)


def plan_failures(topo: Topology) -> list[LabFailure]:
    out: list[LabFailure] = []
    responders = sorted({c.nodes[1] for c in topo.vpn})
    for node in responders:
        # its own end of each tunnel: the peer only notices at DPD, and keeps its tunnel meanwhile
        keys = tuple(f"{node}/{c.name}" for c in topo.vpn if node in c.nodes)
        out.append(LabFailure(f"{node} down", "instance down", node, down=keys))
    for c in topo.vpn:
        end = next((n for n in c.nodes if topo.node(n).kind == "ipsecemu"), None)
        if end is None:  # charon on both ends: no terminate through our control socket
            continue
        out.append(LabFailure(f"{c.name} terminated", "tunnel terminated", end, c.name,
                              down=tuple(f"{n}/{c.name}" for n in c.nodes)))
    return out


def _daemons(state: LabState, node: str) -> list[int]:
    state.reload()
    return [p["pid"] for p in state.data.get("processes", [])
            if p.get("node") == node and p.get("role") == "daemon" and pid_alive(p["pid"], p.get("start_time"))]


def _wait(state: LabState, pred: Any, since: float) -> bool:
    deadline = time.monotonic() + CONVERGE_S
    while time.monotonic() < deadline:
        st = read_status(state)
        if st.get("time", 0) > since and pred(st.get("tunnels") or {}):
            time.sleep(SETTLE_S)
            return True
        time.sleep(0.25)
    return False


def apply(state: LabState, f: LabFailure) -> bool:
    """Apply ``f``; True once the route agent shows it."""
    t0 = time.time()
    if f.kind == "instance down":
        f.pids = _daemons(state, f.node)
        if not f.pids:
            raise FailureError(f"no running daemon on {f.node}")
        for pid in f.pids:
            os.kill(pid, signal.SIGSTOP)
    else:
        try:
            request(node_dir(state, f.node) / "control.sock", "terminate", timeout=5.0, target=f.conn)
        except (ControlError, OSError) as exc:
            raise FailureError(f"terminate {f.conn} on {f.node}: {exc}") from None
    return _wait(state, lambda up: not any(up.get(k) for k in f.down), t0)


def restore(state: LabState, f: LabFailure) -> bool:
    """Undo ``f``; True once every tunnel is up again."""
    t0 = time.time()
    if f.kind == "instance down":
        for pid in f.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        f.pids = []
    else:
        try:
            request(node_dir(state, f.node) / "control.sock", "initiate", timeout=5.0, target=f.conn)
        except (ControlError, OSError) as exc:
            raise FailureError(f"initiate {f.conn} on {f.node}: {exc}") from None
    return _wait(state, lambda up: bool(up) and all(up.values()), t0)


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


def run_failures(topo: Topology, state: LabState, audit: Audit) -> list[Column]:
    """The baseline audit, then one audit per single failure (applied, converged, audited, restored)."""
    cols = [Column("none", run_audit(topo, state, audit))]
    for f in plan_failures(topo):
        note = ""
        try:
            try:
                if not apply(state, f):
                    note = "route agent did not show the failure in time"
                report: Report | None = run_audit(topo, state, audit)
            finally:
                if not restore(state, f):
                    note = (note + "; " if note else "") + "not all tunnels back up in time"
        except FailureError as exc:
            report, note = None, str(exc)
        cols.append(Column(f.name, report, note))
    return cols


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
            cells.append((p.observed + mark).ljust(w))
        out.append("  ".join([n.ljust(w0), *cells]))
    for c in cols:
        if c.note:
            out.append(f"{c.failure}: {c.note}")
    leaks = [(c.failure, x) for c in cols for x in c.leaks()]
    out.append("! = expected encrypted, went clear: " + ("; ".join(f"{x} when {f}" for f, x in leaks) or "none"))
    return out


def matrix_dict(cols: list[Column]) -> dict[str, Any]:
    return {"failures": [{"failure": c.failure, "note": c.note, "leaks": c.leaks(),
                          "audit": c.report.as_dict() if c.report else None} for c in cols]}
