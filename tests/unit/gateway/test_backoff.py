"""Re-initiation back-off of a failing connection (gateway/timers.py Backoff): 1 s doubling to a
60 s cap, jitter from an injected rng, reset on success; what ``sa list`` shows meanwhile."""

from __future__ import annotations

import pytest

from ipsecemu.config.gateway import loads
from ipsecemu.gateway.ops import ControlOps
from ipsecemu.gateway.timers import Backoff
from ipsecemu.ike.render import render_text

from support.gateway_config import GOOD


def test_doubles_from_one_second_to_the_cap_and_resets_on_success() -> None:
    b = Backoff(rng=lambda: 0.0)  # no jitter drawn: the bare schedule
    delays = [b.failed("vpn", 0.0, "auth_failed") for _ in range(10)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert b.retries["vpn"].attempts == 10
    b.succeeded("vpn")
    assert b.failed("vpn", 0.0) == 1.0  # a new failure after a success starts over


def test_jitter_only_shortens_and_stays_within_its_share() -> None:
    draws = iter([0.0, 0.5, 0.999, 0.25] * 30)
    b = Backoff(rng=lambda: next(draws))
    got = [b.failed("c", 0.0) for _ in range(12)]
    bare = [min(60.0, 2.0 ** n) for n in range(12)]
    assert all(0.8 * x <= g <= x for g, x in zip(got, bare, strict=True))
    assert got[1] == pytest.approx(2 * 0.9) and max(got) <= 60.0
    assert len(set(got[7:])) > 1  # at the cap the waits still differ: peers do not retry in step


def test_never_more_than_a_minute_apart_even_after_a_day_of_failures() -> None:
    b = Backoff(rng=lambda: 0.0)
    now = 0.0
    for _ in range(2000):
        now += b.failed("c", now)
    assert b.retries["c"].attempts == 2000 and now <= 2000 * 60.0


class _Ops(ControlOps):
    """The control operations over a config and no IKE SAs (what list_sas shows while backing off)."""

    def __init__(self) -> None:
        self.cfg = loads(GOOD)
        self.locals, self.dps, self.held = {}, {}, set()
        self.ike_info, self.child_created, self._uid, self._uids = {}, {}, 0, {}
        self.backoff = Backoff(rng=lambda: 0.5)
        self.t = 100.0

    def now(self) -> float:
        return self.t


def test_sa_list_shows_the_waiting_connection_with_attempts_and_next_attempt() -> None:
    ops = _Ops()
    assert ops.list_sas() == []
    for _ in range(3):
        ops.backoff.failed("azure", ops.t, "auth_failed: PSK mismatch: ...")
    ops.t += 1.0
    (entry,) = ops.list_sas()
    assert entry["state"] == "BACKOFF" and entry["attempts"] == 3 and entry["next-attempt"] == 2.6  # 4*0.9-1
    assert entry["last-failure"].startswith("auth_failed: PSK mismatch")
    text = render_text(ops.list_sas())
    assert "azure: #, BACKOFF" in text
    assert "failed 3 time(s) in a row, next attempt in 2.6s (last: auth_failed: PSK mismatch: ...)" in text
    ops.backoff.succeeded("azure")
    assert ops.list_sas() == []
