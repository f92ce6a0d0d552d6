"""Processes started and stopped by PID: SIGTERM, a bounded wait, then SIGKILL.

A PID recorded earlier may since have been reused; :func:`pid_alive` compares the start time
from /proc so a stranger is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["pid_alive", "proc_start_time", "start", "stop_pids", "stop_popen", "wait_for"]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live PID, so a reused PID is never mistaken."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: fields after the last ')' are fixed
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def pid_alive(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` runs, is not a zombie and (when given) started at ``start_time``."""
    st = proc_start_time(pid)
    if st is None:
        return False
    if start_time is not None and st != start_time:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is not alive for our purposes


def start(argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` with stdin closed, in its own session (a Ctrl-C on our terminal reaches us
    only; we stop it by PID)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("start_new_session", True)
    return subprocess.Popen(list(argv), **kw)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone: stopping is idempotent


def stop_popen(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int | None:
    """Stop a child we started: SIGTERM, wait up to ``timeout``, SIGKILL.  Returns its exit status
    (None only if it survived SIGKILL for ``timeout``).  Idempotent."""
    if proc.poll() is None:
        _kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode


def stop_pids(pids: Iterable[tuple[int, int | None]], timeout: float = 3.0) -> int:
    """Stop recorded (pid, start_time) pairs that are not our children: SIGTERM to all, wait up
    to ``timeout`` for all, SIGKILL the rest.  Returns how many were alive."""
    live = [(p, st) for p, st in pids if pid_alive(p, st)]
    for p, _ in live:
        _kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p, st) for p, st in live):
        time.sleep(0.05)
    for p, st in live:
        if pid_alive(p, st):
            _kill(p, signal.SIGKILL)
    return len(live)
