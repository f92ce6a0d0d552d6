"""tcpdump inside a lab netns: started by PID, recorded in the lab state, stopped by PID."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .state import LabState

_COUNT_RE = re.compile(r"^(\d+) packets? captured", re.M)


class CaptureError(Exception):
    """Capture could not start (bad interface, tcpdump missing); one-line message."""


class Capture:
    def __init__(self, state: LabState, node: str, iface: str, path: str | Path) -> None:
        ns = state.node_netns(node)
        if ns is None:
            raise CaptureError(f"lab '{state.name}' has no node '{node}'")
        self.state, self.node, self.iface, self.ns = state, node, iface, ns
        self.path = Path(path).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.packets: int | None = None
        self._stderr = b""

    def _check_iface(self) -> None:
        from .builder import BuildError, ipr_in

        try:
            with ipr_in(self.ns) as ipr:
                names = sorted(link.get("ifname") for link in ipr.link("dump"))
        except BuildError as exc:
            raise CaptureError(str(exc)) from None
        if self.iface not in names:
            raise CaptureError(f"node '{self.node}' has no interface '{self.iface}' (has: {', '.join(names)})")

    def start(self, timeout: float = 5.0) -> None:
        """Start tcpdump and return once it is listening (so no early packet is missed)."""
        if shutil.which("tcpdump") is None:
            raise CaptureError("tcpdump is not installed (apt-get install tcpdump)")
        self._check_iface()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # `ip netns exec` execs tcpdump in place, so the PID is tcpdump's; -Z root keeps it able to
        # write anywhere root can; -U and --immediate-mode hand over and flush each packet at once, so
        # nothing still sits in the ring buffer when we stop it.
        cmd = ["ip", "netns", "exec", self.ns, "tcpdump", "-i", self.iface, "-n", "-U", "--immediate-mode", "-Z", "root",
               "-w", str(self.path)]
        # own session: a terminal Ctrl-C reaches us, and we stop tcpdump cleanly by PID
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.state.add_process(self.proc.pid, "capture", self.node, cmd)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while b"listening on" not in self._stderr:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None or left <= 0:
                self.stop()
                msg = self._stderr.decode(errors="replace").strip().splitlines()
                raise CaptureError(f"tcpdump did not start: {msg[-1] if msg else 'timeout'}")
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    continue
                self._stderr += chunk

    def stop(self) -> int:
        """Stop tcpdump (SIGINT by PID), wait, return the number of packets captured."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        self._stderr += self.proc.stderr.read()
        self.proc.stderr.close()
        self.state.remove_process(self.proc.pid)
        m = _COUNT_RE.search(self._stderr.decode(errors="replace"))
        self.packets = int(m.group(1)) if m else 0
        return self.packets

    def wait(self, duration: float | None) -> None:
        """Let tcpdump run for ``duration`` seconds (None: until Ctrl-C or tcpdump exits)."""
        end = None if duration is None else time.monotonic() + duration
        try:
            while self.proc is not None and self.proc.poll() is None:
                if end is not None and time.monotonic() >= end:
                    return
                time.sleep(0.2 if end is None else min(0.2, max(0.0, end - time.monotonic())))
        except KeyboardInterrupt:
            pass

    def run(self, duration: float | None) -> int:
        self.start()
        self.wait(duration)
        return self.stop()


def export_keys(state: LabState, dest: str | Path) -> list[Path]:
    """Copy whatever key files the lab's gateways wrote (Wireshark esp_sa, ikev2 table...)."""
    src = state.keys_dir
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else []
    if not files:
        return []
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        target = out / f.name
        shutil.copyfile(f, target)
        os.chmod(target, 0o600)  # keys: owner only
        copied.append(target)
    return copied
