"""Processes stopped by PID: SIGTERM first, SIGKILL after the bounded wait, never a stranger."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from ipsecemu.net.proc import pid_alive, proc_start_time, start, stop_pids, stop_popen, wait_for

# a child that ignores SIGTERM and says so once the handler is in place
STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_stop_popen_terminates_politely() -> None:
    p = start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_popen(p, timeout=5) == -signal.SIGTERM
    assert stop_popen(p, timeout=5) == -signal.SIGTERM  # idempotent


def test_stop_popen_kills_after_bounded_wait() -> None:
    p = start([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    assert stop_popen(p, timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 3
    p.stdout.close()


def test_start_defaults_new_session_and_no_stdin() -> None:
    p = start([sys.executable, "-c", "import os, sys; print(os.getsid(0) == os.getpid(), sys.stdin.read() == '')"],
              stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=10)
    assert out.split() == ["True", "True"]


def test_stop_pids_checks_start_time() -> None:
    p = start([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        st = proc_start_time(p.pid)
        assert st is not None and pid_alive(p.pid, st)
        # a recorded start time that does not match is a reused PID: left alone
        assert stop_pids([(p.pid, st + 1)], timeout=0.2) == 0
        assert p.poll() is None
        # the real one: SIGTERM is ignored, so the bounded wait ends in SIGKILL
        assert stop_pids([(p.pid, st)], timeout=0.3) == 1
        assert p.wait(5) == -signal.SIGKILL
        assert not pid_alive(p.pid, st)
    finally:
        stop_popen(p, timeout=1)
        if p.stdout:
            p.stdout.close()


def test_zombie_is_not_alive() -> None:
    p = start([sys.executable, "-c", "pass"])
    assert wait_for(lambda: not pid_alive(p.pid, None), 10)  # exited, not yet reaped
    assert p.wait(5) == 0


def test_wait_for_times_out() -> None:
    t0 = time.monotonic()
    assert wait_for(lambda: False, 0.1, interval=0.01) is False
    assert 0.1 <= time.monotonic() - t0 < 1
    assert wait_for(lambda: 1, 0) is True
