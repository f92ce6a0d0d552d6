"""The cffi wrapper of the impairment element (dataplane/native/impair.py) on real sockets:
two datagram socketpairs stand in for the AF_PACKET sockets (the element only reads and writes
whole frames), so the threaded run loop, live reconfiguration and counters run without root.
Re-run under ASan/UBSan by tests/system/test_native_asan.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.dataplane.native.impair import DIR_FIELDS, STAT_FIELDS, ImpairElement


@pytest.fixture
def wires() -> Iterator[tuple[socket.socket, socket.socket, ImpairElement]]:
    a_end, a_el = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_el, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    el = ImpairElement(a_el.fileno(), b_el.fileno(), max_frame=1522, pool=512, seed=7)
    el.start()
    try:
        yield a_end, b_end, el
    finally:
        el.stop()
        for s in (a_end, a_el, b_el, b_end):
            s.close()


def frame(i: int, n: int = 100) -> bytes:
    return i.to_bytes(4, "big") + bytes(n - 4)


def recv_all(s: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    s.settimeout(timeout)
    out = []
    try:
        while len(out) < n:
            out.append(s.recv(2048))
    except TimeoutError:
        pass
    return out


def test_passes_both_ways_unimpaired(wires: tuple[socket.socket, socket.socket, ImpairElement]) -> None:
    a, b, el = wires
    for i in range(50):
        a.send(frame(i))
        b.send(frame(1000 + i))
    assert recv_all(b, 50) == [frame(i) for i in range(50)]
    assert recv_all(a, 50) == [frame(1000 + i) for i in range(50)]
    s0, s1 = el.stats(0), el.stats(1)
    assert s0["rx"] == s0["passed"] == 50 and s1["passed"] == 50 and s0["bytes"] == 5000
    assert set(s0) == set(STAT_FIELDS)


def test_delay_is_per_direction_and_live(wires: tuple[socket.socket, socket.socket, ImpairElement]) -> None:
    a, b, el = wires
    el.set(0, delay_ns=30_000_000)
    assert el.get(0)["delay_ns"] == 30_000_000 and el.get(1)["delay_ns"] == 0 and set(el.get(0)) == set(DIR_FIELDS)
    t0 = time.monotonic()
    a.send(frame(1))
    assert recv_all(b, 1) == [frame(1)]
    took = time.monotonic() - t0
    t0 = time.monotonic()
    b.send(frame(2))
    assert recv_all(a, 1) == [frame(2)]
    back = time.monotonic() - t0
    assert 0.030 <= took < 0.5 and back < 0.025
    el.set(0)  # cleared
    t0 = time.monotonic()
    a.send(frame(3))
    assert recv_all(b, 1) == [frame(3)] and time.monotonic() - t0 < 0.025


def test_full_loss_drops_and_counts(wires: tuple[socket.socket, socket.socket, ImpairElement]) -> None:
    a, b, el = wires
    el.set(0, loss_ppm=1_000_000)
    for i in range(20):
        a.send(frame(i))
    assert recv_all(b, 1, timeout=0.3) == []
    assert el.stats(0)["dropped_loss"] == 20


def test_oversize_frames_are_counted_not_truncated(wires: tuple[socket.socket, socket.socket, ImpairElement]) -> None:
    a, b, el = wires
    a.send(bytes(1600))
    a.send(frame(5))
    assert recv_all(b, 1) == [frame(5)]
    assert el.stats(0)["dropped_tx"] == 1


@pytest.mark.parametrize("bad", [{"delay_ns": 5_000_000_000}, {"loss_ppm": 1_000_001}, {"nope": 1},
                                 {"delay_ns": -1}])
def test_bad_settings_are_refused(wires: tuple[socket.socket, socket.socket, ImpairElement],
                                  bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        wires[2].set(0, **bad)
    with pytest.raises(ConfigError):
        wires[2].set(2)


def test_constructor_checks() -> None:
    with pytest.raises(ConfigError):
        ImpairElement(3, 3)
    with pytest.raises(ConfigError):
        ImpairElement(3, 4, max_frame=10)
