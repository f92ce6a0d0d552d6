"""Per-lab state directory ``/run/ipsecemu/<lab>/``: what was created, PIDs, logs, keys.

Every object is recorded *before* it is created (state "pending"), so a crash at any point leaves
enough behind for ``lab down`` to remove it.  Writers take a file lock and re-read the file, so
other processes (a gateway daemon registering its PID) can update the same state safely.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import LabError
from ipsecemu.net.proc import pid_alive, proc_start_time

__all__ = ["LabState", "LabStateError", "list_labs", "pid_alive", "proc_start_time", "run_dir"]

STATE_FILE = "state.json"
# A charon's instance dirs.  Not under /run: charon runs with its own dir bind-mounted over /run
# (its pid file path is compiled in), which would hide a dir below /run from it.
CHARON_BASE = Path("/tmp/ipsecemu-charon")


def run_dir() -> Path:
    """Root of all lab state; IPSECEMU_RUN_DIR overrides it (kept for odd hosts)."""
    return Path(os.environ.get("IPSECEMU_RUN_DIR", "/run/ipsecemu"))


class LabStateError(LabError):
    """A state-level user error (lab missing, already up); message is one line."""


class LabState:
    """The recorded state of one lab.  ``data`` is the last loaded JSON."""

    def __init__(self, name: str, base: Path | None = None) -> None:
        self.name = name
        self.dir = (base or run_dir()) / name
        self.path = self.dir / STATE_FILE
        self.data: dict[str, Any] = {}

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, name: str, source: str, nodes: dict[str, str], base: Path | None = None) -> LabState:
        st = cls(name, base)
        st.dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            st.dir.mkdir(mode=0o755)  # atomic: two `lab up` of one name cannot both win
        except FileExistsError:
            raise LabStateError(
                f"lab '{name}' is already up or was not torn down (state in {st.dir}); "
                f"run 'ipsecemu lab down {name}' first") from None
        for sub in ("logs", "keys"):
            (st.dir / sub).mkdir(mode=0o700)
        st.data = {
            "lab": name, "source": source, "status": "building", "created": time.time(),
            "nodes": nodes, "netns": [], "links": [], "processes": [],
        }
        st._write(st.data)
        return st

    @classmethod
    def open(cls, name: str, base: Path | None = None) -> LabState:
        st = cls(name, base)
        if not st.path.exists():
            if st.dir.exists():  # crashed between mkdir and first write: still removable
                st.data = {"lab": name, "status": "broken", "nodes": {}, "netns": [], "links": [], "processes": []}
                return st
            raise LabStateError(f"no lab named '{name}' is up")
        st.reload()
        return st

    def reload(self) -> None:
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise LabStateError(f"cannot read {self.path}: {exc}") from None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ paths
    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def keys_dir(self) -> Path:
        return self.dir / "keys"

    def charon_dir(self, node: str) -> Path:
        """The instance dir of ``node``'s charon, as recorded when it started."""
        d = (self.data.get("charon_dirs") or {}).get(node)
        return Path(d) if d else CHARON_BASE / self.name / node

    # ------------------------------------------------------------ locked updates
    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)  # readers never see a half-written file

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Lock, re-read, let the caller mutate, write back."""
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists():
                    self.reload()
                yield self.data
                self._write(self.data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def set_status(self, status: str) -> None:
        with self.update() as d:
            d["status"] = status

    def add_netns(self, ns: str, owner: str) -> None:
        with self.update() as d:
            d["netns"].append({"name": ns, "owner": owner, "state": "pending"})

    def mark_netns(self, ns: str, state: str) -> None:
        with self.update() as d:
            for e in d["netns"]:
                if e["name"] == ns:
                    e["state"] = state

    def add_link(self, **info: Any) -> None:
        with self.update() as d:
            d["links"].append(info)

    def add_process(self, pid: int, role: str, node: str | None = None,
                    cmd: list[str] | None = None, log: str | None = None) -> None:
        """Register a process the lab must stop on ``lab down`` (daemons, captures)."""
        with self.update() as d:
            d["processes"].append({"pid": pid, "start_time": proc_start_time(pid), "role": role,
                                   "node": node, "cmd": cmd or [], "log": log})

    def remove_process(self, pid: int) -> None:
        with self.update() as d:
            d["processes"] = [p for p in d["processes"] if p["pid"] != pid]

    # ------------------------------------------------------------ queries
    def netns_names(self) -> list[str]:
        return [e["name"] for e in self.data.get("netns", [])]

    def node_netns(self, node: str) -> str | None:
        for e in self.data.get("netns", []):
            if e.get("owner") == f"node:{node}":
                return str(e["name"])
        return None


def list_labs(base: Path | None = None) -> list[str]:
    root = base or run_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())
