"""Child processes of a bench run, started in their own session and stopped by PID (so a Ctrl-C or
SIGTERM of the bench stops every one of them and nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

__all__ = ["Procs"]


def _stop_pid(p: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, a bounded wait, then SIGKILL.  The one copy in ipsecemu.bench: to be swapped for the
    shared process helper (ipsecemu.net) once that lands."""
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout)
    except ProcessLookupError:
        pass


class Procs:
    """Every child process of the run, so a Ctrl-C can stop all of them by PID."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> int | None:
        _stop_pid(p, timeout)
        if p in self.live:
            self.live.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p)
