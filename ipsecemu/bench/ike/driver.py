"""The parent side of ``ipsecemu bench ike``: worker processes spoken to in JSON lines, charon's vici
``child-updown`` events (what the responder confirmed), the vici initiate driver for strongSwan <->
strongSwan, and SIGTERM handled like Ctrl-C so everything started is stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import vici.exception

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.ike.report import SETTLE_S, Run
from ipsecemu.net.proc import stop_popen

__all__ = ["UpdownListener", "Worker", "charon_conf", "sigterm_as_interrupt", "vici_run"]


class Worker:
    """One worker process in a netns, spoken to in JSON lines; stopped by its PID."""

    def __init__(self, ns: str, args: list[str]) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "ipsecemu.bench.ike", *args]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            start_new_session=True)  # Ctrl-C reaches only us; we stop the worker ourselves

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        out = self.proc.stdout
        assert out is not None  # Popen(stdout=PIPE)
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(out.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise BenchError(f"worker {self.argv[5:]} gave no answer within {timeout:.0f}s:\n{self.stderr_tail()}")
        reply: dict[str, Any] = json.loads(box[0])
        return reply

    def stderr_tail(self, n: int = 15) -> str:
        self.err.seek(0)
        return "\n".join(self.err.read().decode(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                if proc.stdin:
                    proc.stdin.close()  # the polite way: EOF ends an idle worker
                proc.wait(0.5)
            except (subprocess.TimeoutExpired, OSError):
                stop_popen(proc, 3)
        for f in (proc.stdout, proc.stdin):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        self.err.close()


class UpdownListener:
    """Initiator SPIs of every CHILD_SA charon reports up (vici ``child-updown``), plus the
    charon unique id -> SPI map (to match vici initiates with SPIs)."""

    def __init__(self, charon: Any) -> None:
        self.charon = charon
        self.spis: set[str] = set()
        self.by_uid: dict[str, str] = {}
        self.samples: list[dict[str, Any]] = []  # a few full event bodies, for tests
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> UpdownListener:
        self._thread.start()
        if not self._ready.wait(5):
            raise BenchError(f"vici event listener in {self.charon.ns} did not register")
        return self

    def _run(self) -> None:
        try:
            s = self.charon.session(timeout=5)
            for label, ev in s.listen(["child-updown"], timeout=0.1):
                self._ready.set()
                if self._stop.is_set():
                    break
                if label is None or ev.get("up") != b"yes":
                    continue
                for name, sa in ev.items():
                    if name == "up" or not isinstance(sa, dict):
                        continue
                    spi = sa.get("initiator-spi", b"").decode()
                    with self._lock:
                        self.spis.add(spi)
                        self.by_uid[sa.get("uniqueid", b"").decode()] = spi
                        if len(self.samples) < 3:
                            self.samples.append({"name": name, "state": sa.get("state", b"").decode(),
                                                 "initiator-spi": spi,
                                                 "child-states": [c.get("state", b"").decode()
                                                                  for c in sa.get("child-sas", {}).values()]})
        except Exception:  # noqa: BLE001 - charon stopped under us: the listener just ends
            pass
        finally:
            self._ready.set()

    def snapshot(self) -> tuple[set[str], dict[str, str]]:
        with self._lock:
            out = set(self.spis), dict(self.by_uid)
            self.spis.clear()
            self.by_uid.clear()
            return out

    def settle(self, expect: int, timeout: float = 2.0) -> None:
        """Wait until ``expect`` events arrived (they trail the initiator by a little)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.spis) >= expect:
                    return
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def vici_run(charon: Any, conn: str, duration: float | None, count: int | None,
             k: int) -> tuple[Run, dict[str, float]]:
    """K threads, each: blocking vici ``initiate`` of child ``net`` of ``conn``, then an
    asynchronous ``terminate`` of that IKE SA.  Returns the run keyed by charon unique id."""
    lock = threading.Lock()
    state = {"launched": 0, "failed": 0, "last": 0.0}
    by_uid: dict[str, float] = {}
    t0 = time.monotonic()
    deadline = t0 + duration if duration is not None else None
    errors: list[str] = []

    def claim() -> bool:
        with lock:
            if count is not None:
                ok = state["launched"] < count
            else:
                ok = time.monotonic() < (deadline or 0)
            if ok:
                state["launched"] += 1
            return ok

    def loop() -> None:
        try:
            s = charon.session(timeout=30)
        except OSError as exc:
            errors.append(str(exc))
            return
        try:
            while claim():
                start = time.monotonic()
                uid = ""
                try:
                    for log in s.initiate({"child": "net", "ike": conn, "timeout": "8000", "init-limits": "no",
                                           "loglevel": "0"}):
                        uid = uid or log.get("ikesa-uniqueid", b"").decode()
                    end = time.monotonic()
                    with lock:
                        by_uid[uid] = end - start
                        state["last"] = max(state["last"], end)
                except vici.exception.CommandException:
                    with lock:
                        state["failed"] += 1
                if uid:
                    # timeout -1: don't wait for the DELETE exchange (the next initiate goes out now)
                    for _ in s.terminate({"ike-id": uid, "timeout": "-1"}):
                        pass
        except Exception as exc:  # noqa: BLE001 - reported below; a dead charon ends the run
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                s.transport.socket.close()
            except OSError:
                pass

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(k)]
    for t in threads:
        t.start()
    limit = time.monotonic() + (duration or 0) + SETTLE_S + (count or 0) * 0.5
    for t in threads:
        t.join(max(0.0, limit - time.monotonic()))
    if errors and not by_uid:
        raise BenchError(f"vici initiate failed: {errors[0]}\n{charon.log_tail()}")
    return Run({}, (state["last"] or time.monotonic()) - t0, int(state["failed"])), by_uid


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally (workers, charons, netns) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    me = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != me:  # a child forked by a library (pyroute2 netns): die as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def charon_conf(k: int) -> str:
    # a vici initiate blocks a worker thread: threads >= concurrent initiates + 16 (notes)
    # log level 0: errors and one line per SA, as a busy gateway would run (not the harness's 1)
    lvl = 0
    return (f"charon {{\n  threads = {max(24, k + 24)}\n"
            f"  filelog {{\n    main {{\n      default = {lvl}\n      ike = {lvl}\n      chd = {lvl}\n    }}\n  }}\n}}\n")
