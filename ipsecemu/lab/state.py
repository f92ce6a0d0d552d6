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
from ipsecemu.config.rundir import run_dir
from ipsecemu.net.proc import pid_alive, proc_start_time

__all__ = ["KEEP_FAILED", "LabState", "LabStateError", "builder_died", "default_lab", "failed_dir", "failed_note",
           "keep_failed_logs", "list_labs", "pid_alive", "proc_start_time", "prune_failed", "run_dir",
           "set_default_lab"]

STATE_FILE = "state.json"
DEFAULT_LAB_FILE = "default-lab"  # under run_dir(): the lab `make lab` built (commands without a lab name)
# A charon's instance dirs.  Not under /run: charon runs with its own dir bind-mounted over /run
# (its pid file path is compiled in), which would hide a dir below /run from it.
CHARON_BASE = Path("/tmp/ipsecemu-charon")


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
        pid = os.getpid()
        st.data = {
            # absolute: `lab audit` re-reads the file later, maybe from another directory
            "lab": name, "source": os.path.abspath(source), "status": "building", "created": time.time(),
            # who builds it: a `lab up` killed by SIGKILL leaves "building"; status checks this PID
            "builder": {"pid": pid, "start_time": proc_start_time(pid)},
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


def builder_died(data: dict[str, Any]) -> bool:
    """True when the lab is still "building" but the `lab up` that builds it is gone (killed)."""
    b = data.get("builder")
    if data.get("status") != "building" or not isinstance(b, dict) or not isinstance(b.get("pid"), int):
        return False
    return not pid_alive(b["pid"], b.get("start_time"))


def list_labs(base: Path | None = None) -> list[str]:
    root = base or run_dir()
    if not root.is_dir():
        return []
    # lab names start with a letter (topology schema): ".failed" and other bookkeeping are not labs
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---------------------------------------------------------------- the default lab


def set_default_lab(name: str, base: Path | None = None) -> None:
    """Record ``name`` as the lab commands use when none is named (``make lab`` sets it)."""
    root = base or run_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{DEFAULT_LAB_FILE}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / DEFAULT_LAB_FILE)


def default_lab(base: Path | None = None) -> str | None:
    """The recorded default lab, if it is still up; None otherwise."""
    root = base or run_dir()
    try:
        name = (root / DEFAULT_LAB_FILE).read_text().strip()
    except OSError:
        return None
    return name if name and name in list_labs(base) else None


# ---------------------------------------------------------------- failed labs


KEEP_FAILED = 10  # copies in .failed/: enough to compare a few attempts, bounded on a long-lived host


def failed_dir(base: Path | None = None) -> Path:
    """Where the logs of failed `lab up`s are kept (the rollback removes the lab's own dir)."""
    return (base or run_dir()) / ".failed"


def keep_failed_logs(state: LabState) -> Path | None:
    """Copy the lab's logs and generated configs (not its keys or sockets) to
    ``<run dir>/.failed/<lab>-<time>/`` before the rollback removes the state dir; returns the copy,
    or None when there was nothing to keep."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = failed_dir(state.dir.parent) / f"{state.name}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = failed_dir(state.dir.parent) / f"{state.name}-{stamp}-{n}"
    with contextlib.suppress(LabStateError):
        state.reload()  # daemons register themselves: the file knows more than our copy
    kept = logs = 0
    for src in sorted(state.dir.rglob("*")):
        rel = src.relative_to(state.dir)
        if (not src.is_file() or src.is_symlink() or rel.parts[0] == "keys" or src.suffix in (".sock", ".tmp")
                or src.name == ".lock"):
            continue  # keys are secrets; sockets and locks mean nothing once the lab is gone
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            shutil.copy2(src, out)
        except OSError:
            continue
        kept += 1
        logs += src.suffix == ".log"
    for extra in state.data.get("processes", []):  # daemon logs kept outside the state dir (charon)
        log = extra.get("log")
        if log and not str(log).startswith(str(state.dir)) and os.path.isfile(log):
            out = dest / "external" / str(extra.get("node") or "lab") / os.path.basename(log)
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(OSError):
                shutil.copy2(log, out)
                kept += 1
                logs += 1
    if not logs:  # failed before any daemon ran (e.g. a netns exists): the error says it all
        if kept:
            shutil.rmtree(dest, ignore_errors=True)
        return None
    os.chmod(dest, 0o700)  # gateway.yaml holds the PSK
    prune_failed(dest.parent, keep=dest)
    return dest


def prune_failed(where: Path, keep: Path | None = None, n: int = KEEP_FAILED) -> list[Path]:
    """Remove all but the newest ``n`` copies in ``where`` (a .failed dir), never ``keep``; returns
    what went.  Oldest by modification time: names start with the lab, not the time."""
    try:
        copies = [p for p in where.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    def age(p: Path) -> tuple[float, str]:
        try:
            return (p.stat().st_mtime, p.name)
        except OSError:  # removed meanwhile by another failing `lab up`
            return (0.0, p.name)
    copies.sort(key=age, reverse=True)
    gone = [p for p in copies[n:] if p != keep]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def failed_note(kept: Path) -> str:
    """Said wherever a kept copy is named: that it will not stay forever."""
    return f"{kept.parent} keeps the logs of the last {KEEP_FAILED} failed 'lab up's"
