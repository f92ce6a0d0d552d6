"""Child processes of a bench run, started in their own session and stopped by PID (so a Ctrl-C or
SIGTERM of the bench stops every one of them and nothing else)."""

from __future__ import annotations

import subprocess
from typing import Any

from ipsecemu.net.proc import start, stop_popen

__all__ = ["Procs"]


class Procs:
    """Every child process of the run, so a Ctrl-C can stop all of them by PID."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        p = start(argv, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any], timeout: float = 5.0) -> int | None:
        stop_popen(p, timeout)
        if p in self.live:
            self.live.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p)
