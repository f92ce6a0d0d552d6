"""One FRR instance (zebra + bgpd, + staticd / bfdd when needed) per node, inside the node's netns.

Everything of an instance lives under its own state directory: the config (``frr.conf``, loaded through
``vtysh -f``), ``vtysh.conf``, one pid file, vty socket and log per daemon, and zebra's API socket.  The
daemons are started with explicit paths (``-f``, ``-i``, ``-z``, ``--vty_socket``, ``--log``, and
``-P 0``: no TCP vty), so the system's /etc/frr and its service are never used and several instances
run side by side.  FRR 8.4 also has ``-N <pathspace>``, but that still lands under /etc/frr and
/var/run/frr, outside the lab's state directory.

Stopping signals only PIDs read from this instance's pid files, and only while /proc says the process is
that daemon started with this state directory (a recycled PID is left alone): SIGTERM, a bounded wait,
then SIGKILL.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ConfigError, NeedsRootError, ServiceError, SystemSetupError

FRR_SBIN = Path("/usr/lib/frr")
DAEMON_ORDER = ("zebra", "staticd", "bfdd", "bgpd")  # zebra first: the others register with it
KNOWN_DAEMONS = frozenset(DAEMON_ORDER)
VTYSH = "vtysh"
FRR_USER = "frr"  # the daemons drop to this user; the state directory must be theirs


def _find_vtysh() -> str:
    path = shutil.which(VTYSH) or ("/usr/bin/vtysh" if Path("/usr/bin/vtysh").exists() else None)
    if path is None:
        raise SystemSetupError("vtysh not found: install FRR (apt-get install frr, or make deps)")
    return path


def daemons_for_config(conf_text: str) -> tuple[str, ...]:
    """The daemons a hand-written ``frr.conf`` needs (a user's own CE config, where there is no intent
    to ask): staticd for ``ip route`` lines, bfdd for a ``bfd`` block or a neighbour using BFD."""
    lines = [line.strip() for line in conf_text.splitlines()]
    names = ["zebra", "bgpd"]
    if any(line.startswith("ip route ") for line in lines):
        names.append("staticd")
    if any(line == "bfd" or (line.startswith("neighbor ") and " bfd" in line) for line in lines):
        names.append("bfdd")
    return tuple(d for d in DAEMON_ORDER if d in names)


def check_config(conf_text: str, work_dir: Path) -> None:
    """Validate a config with ``vtysh --dryrun`` (FRR's own parser, no daemon needed); raise ConfigError
    with FRR's message when it refuses a line."""
    vtysh = _find_vtysh()
    work_dir.mkdir(parents=True, exist_ok=True)
    conf = work_dir / "frr.conf"
    conf.write_text(conf_text)
    (work_dir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
    proc = subprocess.run([vtysh, "--config_dir", str(work_dir), "--dryrun", "-f", str(conf)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ConfigError(f"{conf}: FRR refuses the config: {(proc.stdout + proc.stderr).strip()}")


@dataclass
class FrrInstance:
    """The FRR daemons of one node.  ``netns`` None runs them in the caller's namespace."""

    node: str
    state_dir: Path
    netns: str | None = None
    daemons: Sequence[str] = ("zebra", "bgpd")

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        unknown = set(self.daemons) - KNOWN_DAEMONS
        if unknown or "zebra" not in self.daemons or "bgpd" not in self.daemons:
            raise ConfigError(f"{self.node}: FRR daemons must include zebra and bgpd, from "
                              f"{sorted(KNOWN_DAEMONS)} (got {list(self.daemons)})")
        self.daemons = tuple(d for d in DAEMON_ORDER if d in self.daemons)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.state_dir / "frr.conf"

    @property
    def zserv_path(self) -> Path:
        return self.state_dir / "zserv.api"

    def pid_path(self, daemon: str) -> Path:
        return self.state_dir / f"{daemon}.pid"

    def log_path(self, daemon: str) -> Path:
        return self.state_dir / f"{daemon}.log"

    def _ns_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def daemon_argv(self, daemon: str) -> list[str]:
        """The exact command line a daemon is started with."""
        d = str(self.state_dir)
        argv = [str(FRR_SBIN / daemon), "-d", "-f", "/dev/null", "-i", str(self.pid_path(daemon)),
                "--vty_socket", d, "-P", "0", "--log", f"file:{self.log_path(daemon)}"]
        argv += ["-z", str(self.zserv_path)]  # zebra serves it, the others connect to it
        if daemon == "bfdd":
            argv += ["--bfdctl", str(self.state_dir / "bfdd.sock")]
        return self._ns_prefix() + argv

    def vtysh_argv(self, *commands: str) -> list[str]:
        """The exact vtysh command line for this instance (what the CLI prints for the user)."""
        argv = self._ns_prefix() + [VTYSH, "--vty_socket", str(self.state_dir),
                                    "--config_dir", str(self.state_dir)]
        for c in commands:
            argv += ["-c", c]
        return argv

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, conf_text: str, timeout: float = 10.0) -> None:
        """Write the config, start the daemons, load the config, wait until healthy.  On any failure
        the daemons already started are stopped again."""
        if os.geteuid() != 0:
            raise NeedsRootError("FRR needs root (network namespaces, routes, port 179)")
        if not (FRR_SBIN / "zebra").exists():
            raise SystemSetupError(f"{FRR_SBIN}/zebra not found: install FRR (make deps)")
        if self.running_daemons():
            raise ServiceError(f"{self.node}: an FRR instance already runs from {self.state_dir}")
        self._prepare_state_dir(conf_text)
        try:
            for daemon in self.daemons:
                self._start_daemon(daemon, timeout)
            self._load_config()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare_state_dir(self, conf_text: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(conf_text)
        (self.state_dir / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        for daemon in self.daemons:
            self.pid_path(daemon).unlink(missing_ok=True)
        try:
            user = pwd.getpwnam(FRR_USER)
        except KeyError as exc:
            raise SystemSetupError(f"user {FRR_USER!r} missing: install FRR (make deps)") from exc
        # The daemons drop to the frr user before writing pid files and sockets here, so the user must
        # own the directory and be able to reach it.
        _check_reachable(self.state_dir.parent, user)
        os.chown(self.state_dir, user.pw_uid, user.pw_gid)
        os.chmod(self.state_dir, 0o770)

    def _start_daemon(self, daemon: str, timeout: float) -> None:
        argv = self.daemon_argv(daemon)
        # -d: FRR's parent returns once the daemon is up; its output goes to the daemon log.
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ServiceError(f"{self.node}: {daemon} failed to start ({' '.join(argv)}): "
                               f"{(proc.stdout + proc.stderr).strip()}")
        deadline = time.monotonic() + timeout
        while self._pid(daemon) is None or not (self.state_dir / f"{daemon}.vty").exists():
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.node}: {daemon} did not come up within {timeout:.0f} s "
                                   f"(log: {self.log_path(daemon)})")
            time.sleep(0.05)

    def _load_config(self) -> None:
        argv = self.vtysh_argv() + ["-f", str(self.config_path)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise ServiceError(f"{self.node}: FRR refused {self.config_path}: "
                               f"{(proc.stdout + proc.stderr).strip()}")

    def health(self) -> dict[str, bool]:
        """Per daemon: is its process alive; plus "vtysh": does bgpd answer through vtysh."""
        state = {d: self._pid(d) is not None for d in self.daemons}
        try:
            self.vtysh_json("show bgp summary json", daemon="bgpd")
            state["vtysh"] = True
        except ServiceError:
            state["vtysh"] = False
        return state

    def healthy(self) -> bool:
        return all(self.health().values())

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.health()
            if all(state.values()):
                return
            if time.monotonic() > deadline:
                down = [k for k, ok in state.items() if not ok]
                raise ServiceError(f"{self.node}: FRR not healthy after {timeout:.0f} s ({', '.join(down)} "
                                   f"down; logs in {self.state_dir})")
            time.sleep(0.1)

    def vtysh(self, *commands: str, daemon: str | None = None, timeout: float = 20.0) -> str:
        argv = self.vtysh_argv(*commands)
        if daemon is not None:
            argv[len(self._ns_prefix()) + 1:len(self._ns_prefix()) + 1] = ["-d", daemon]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{self.node}: vtysh timed out: {' '.join(argv)}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"{self.node}: vtysh failed ({proc.returncode}): "
                               f"{(proc.stdout + proc.stderr).strip()}")
        return proc.stdout

    def vtysh_json(self, command: str, daemon: str | None = None) -> Any:
        out = self.vtysh(command, daemon=daemon)
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise ServiceError(f"{self.node}: {command!r} did not return JSON: {out[:200]!r}") from exc

    # -- processes ------------------------------------------------------------------------------
    def _pid(self, daemon: str) -> int | None:
        """The daemon's PID if its pid file names a live process that is this instance's daemon."""
        try:
            pid = int(self.pid_path(daemon).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return None  # exited, not yet reaped by its parent
        ours = bool(cmdline) and cmdline[0].endswith(daemon.encode()) and \
            str(self.pid_path(daemon)).encode() in cmdline
        return pid if ours else None

    def running_daemons(self) -> dict[str, int]:
        return {d: pid for d in DAEMON_ORDER if (pid := self._pid(d)) is not None}

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every daemon of this instance (bgpd first, zebra last), wait up to ``timeout``, then
        SIGKILL what is left."""
        pids = self.running_daemons()
        for daemon in reversed(DAEMON_ORDER):
            if daemon in pids:
                _signal(pids[daemon], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running_daemons():
            time.sleep(0.05)
        for pid in self.running_daemons().values():
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self.running_daemons():
            time.sleep(0.05)
        left = self.running_daemons()
        if left:
            raise ServiceError(f"{self.node}: FRR daemons survive SIGKILL: {left}")
        for daemon in DAEMON_ORDER:
            self.pid_path(daemon).unlink(missing_ok=True)


def _check_reachable(directory: Path, user: pwd.struct_passwd) -> None:
    """Refuse early (instead of a daemon dying on its pid file) when ``user`` cannot traverse a parent
    directory of the state directory (e.g. pytest's 0700 tmp dirs)."""
    groups = {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem} | {user.pw_gid}
    for d in (directory, *directory.parents):
        st = d.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise SystemSetupError(f"{d}: the {user.pw_name} user FRR runs as cannot enter this directory; "
                                   "put the FRR state directory somewhere it can reach (e.g. /run/ipsecemu)")


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone
