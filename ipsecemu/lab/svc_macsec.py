"""Lab service: the MACsec link daemons of the plan, one per end of every ``macsec:`` link.

The builder already made the tap (the node's L3 side, with its addresses) and the veth under it
(``<iface>_phy``).  Each daemon runs inside its node's netns (``ip netns exec``, which execs, so
the PID we register is the daemon's own); its config (it holds the CAK: mode 0600), log and
status go to ``<lab state dir>/<node>/``, the SAKs in use to ``keys_dir`` for ``lab capture
--keys`` + ``pcap decrypt``.  ``start`` returns once MKA secured every link (bounded wait).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ipsecemu.base.errors import ConfigError
from ipsecemu.macsec_link.daemon import read_status
from ipsecemu.net.proc import start as start_process

from .errors import MacsecServiceError
from .plan import MACSEC_LINK, Daemon, LabPlan, write_file
from .plan.macsec import keys_file, status_file
from .plan.render import daemon_argv
from .state import LabState

__all__ = ["MacsecServiceError", "keys_path", "start", "status_path"]

SECURE_TIMEOUT = 20.0  # s: MKA needs a few hello times at most


def status_path(state: LabState, node: str, iface: str) -> Path:
    return state.dir / status_file(node, iface)


def keys_path(state: LabState, node: str, iface: str) -> Path:
    return state.dir / keys_file(node, iface)


def _start_end(plan: LabPlan, state: LabState, d: Daemon) -> tuple[int, Path, Path]:
    assert d.node is not None
    for f in d.files:
        write_file(state.dir, f)
    st = state.dir / d.info["status"]
    st.unlink(missing_ok=True)
    logf = state.dir / d.log
    cmd = daemon_argv(d, plan)
    with open(logf, "ab") as out:
        p = start_process(cmd, stdout=out, stderr=subprocess.STDOUT)
    state.add_process(p.pid, "daemon", d.node, cmd=cmd, log=str(logf))
    return p.pid, st, logf


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _secured(path: Path) -> bool:
    try:
        st = read_status(path)
    except ConfigError:
        return False
    return bool(st.get("secured") and st.get("live_peers"))


def start(plan: LabPlan, state: LabState, say: Callable[[str], None]) -> None:
    daemons = plan.daemons_of(MACSEC_LINK)
    if not daemons:
        return
    for note in plan.notes:
        if note.startswith("macsec "):
            say(note)
    ends = []
    for d in daemons:
        pid, st, logf = _start_end(plan, state, d)
        ends.append((d.info["end"], pid, st, logf))
    deadline = time.monotonic() + SECURE_TIMEOUT
    waiting = list(ends)
    while waiting:
        for e in list(waiting):
            name, pid, st, logf = e
            if _secured(st):
                waiting.remove(e)
                continue
            try:
                done = os.waitpid(pid, os.WNOHANG)[0]
            except ChildProcessError:
                done = pid
            if done:
                raise MacsecServiceError(f"MACsec link daemon for {name} exited; log {logf}:\n{_tail(logf)}")
        if waiting and time.monotonic() > deadline:
            names = ", ".join(e[0] for e in waiting)
            raise MacsecServiceError(f"MACsec: {names} not secured within {SECURE_TIMEOUT:.0f} s "
                                     f"(MKA did not converge: check cak/ckn/cipher match); logs in {state.dir}")
        time.sleep(0.05)
    said: set[str] = set()
    for d in daemons:  # one line per link
        if d.info["link"] not in said:
            said.add(d.info["link"])
            say(f"macsec {d.info['link']}: secured ({d.info['cipher']}, SCI {d.info['sci_state']})")
