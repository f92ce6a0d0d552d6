"""native/src/impair.c on a fake clock: the delay/jitter timing wheel, loss/duplicate/corrupt
draws, reorder, the token bucket and the queue limit, through native/tests/impair_tool.c (built
plain and with ASan+UBSan under gcc and clang).  Bounds are statistical (binomial, 6 sigma) or
exact (the wheel's 65.5 us tick); the RNG is seeded, so a run is reproducible."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

from support.native_tools import VARIANTS, program
from support.paths import REPO  # noqa: E402

pytestmark = pytest.mark.xdist_group("impair_tool")

MS = 1_000_000
TICK = 65_536  # ns: the wheel's resolution


@pytest.fixture(scope="module", params=VARIANTS)
def tool(request: pytest.FixtureRequest) -> Path:
    return program(REPO / "native" / "tests" / "impair_tool.c", request.param)


def run(tool: Path, *commands: str, overhead: int = 0) -> list[str]:
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", IMPAIR_OVERHEAD=str(overhead))
    res = subprocess.run([str(tool)], input="\n".join(commands) + "\n", capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0 and "runtime error" not in res.stderr, res.stderr[-3000:]
    return res.stdout.splitlines()


def cfg(delay: int = 0, jitter: int = 0, loss: int = 0, reorder: int = 0, dup: int = 0, corrupt: int = 0,
        rate: int = 0, limit: int = 0, seed: int = 1, pool: int = 4096) -> str:
    return f"new {delay} {jitter} {loss} {reorder} {dup} {corrupt} {rate} {limit} {seed} {pool}"


def fields(line: str) -> dict[str, int]:
    words = line.split()[1:]
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def sim(tool: Path, config: str, n: int, interval: int, length: int) -> tuple[dict[str, int], dict[str, int]]:
    out = run(tool, config, f"sim {n} {interval} {length}", "stats")
    assert out[0] == "ok", out
    return fields(out[1]), fields(out[2])


def binomial_ok(count: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd + 1


def test_fixed_delay_never_early_at_most_one_tick_late(tool: Path) -> None:
    s, st = sim(tool, cfg(delay=20 * MS), 2000, MS // 2, 1000)
    assert s["delivered"] == 2000 and s["inversions"] == 0
    assert 20 * MS <= s["lat_min"] and s["lat_max"] <= 20 * MS + TICK
    assert st["delayed"] == 2000 and st["queued"] == 0 and st["passed"] == 2000


def test_jitter_spreads_uniformly_around_the_delay(tool: Path) -> None:
    s, _ = sim(tool, cfg(delay=20 * MS, jitter=5 * MS), 20000, 100_000, 200)
    assert s["delivered"] == 20000
    assert 15 * MS <= s["lat_min"] < 15 * MS + MS // 10
    assert 25 * MS - MS // 10 < s["lat_max"] <= 25 * MS + TICK
    assert abs(s["lat_mean"] - 20 * MS) < MS // 5  # uniform: sd 2.9 ms / sqrt(20000) = 20 us
    assert s["inversions"] > 0  # jitter larger than the spacing reorders, as on netem


def test_loss_is_binomial_and_seeded(tool: Path) -> None:
    n, p = 100_000, 0.01
    s, st = sim(tool, cfg(loss=10_000), n, 1000, 100)
    assert binomial_ok(st["loss"], n, p), st
    assert s["delivered"] == n - st["loss"] and s["lat_max"] == 0
    again, _ = sim(tool, cfg(loss=10_000), n, 1000, 100)
    other, _ = sim(tool, cfg(loss=10_000, seed=2), n, 1000, 100)
    assert again == s and other != s


def test_duplicate_corrupt_reorder_counts(tool: Path) -> None:
    n = 100_000
    s, st = sim(tool, cfg(delay=10 * MS, reorder=20_000, dup=5_000, corrupt=1_000), n, 10_000, 200)
    assert binomial_ok(st["duplicated"], n, 0.005)
    copies = n + st["duplicated"]
    assert binomial_ok(st["corrupted"], copies, 0.001)
    assert binomial_ok(st["reordered"], copies, 0.02)
    assert s["delivered"] == copies == st["passed"]
    assert s["lat_min"] == 0  # a reordered frame leaves at once
    assert s["inversions"] >= st["reordered"] * 0.9


def test_corruption_flips_a_bit_after_the_ethernet_header(tool: Path) -> None:
    out = run(tool, cfg(corrupt=1_000_000), *(f"push {10**9} 60 {i}" for i in range(50)), f"pop {10**9}")
    outs = [line.split() for line in out if line.startswith("out ")]
    assert len(outs) == 50 and all(o[3] == "1" for o in outs)  # tag bytes 0-3 untouched: tags readable
    assert [int(o[1]) for o in outs] == list(range(50))


def test_rate_token_bucket_within_one_percent(tool: Path) -> None:
    rate = 100_000_000
    # offered 1 Gbit/s for 0.5 s: the bucket shapes it, the queue limit drops the excess
    s, st = sim(tool, cfg(rate=rate, limit=1000), 40_000, 10_000, 1250)
    measured = (s["bytes"] - 1250) * 8 / ((s["last"] - s["first"]) / 1e9)
    print(f"token bucket: configured {rate / 1e6:.0f} Mbit/s, measured {measured / 1e6:.2f} Mbit/s")
    assert abs(measured - rate) / rate < 0.01
    assert st["queue"] > 0 and st["queue"] + st["passed"] == 40_000
    # a queue of 1000 frames of 1250 B at 100 Mbit/s: at most 100 ms (+ one frame) of waiting
    assert s["lat_max"] <= 100 * MS + 100_000


def test_rate_overhead_counts_less_per_frame(tool: Path) -> None:
    # -250 B on 1250 B frames: the bucket charges 1000 B, so 100 Mbit/s of "cost" is 125 Mbit/s of frames
    out = run(tool, cfg(rate=100_000_000, limit=1000), "sim 40000 10000 1250", overhead=-250)
    s = fields(out[1])
    measured = (s["bytes"] - 1250) * 8 / ((s["last"] - s["first"]) / 1e9)
    assert abs(measured - 125e6) / 125e6 < 0.01


def test_below_the_rate_nothing_is_dropped(tool: Path) -> None:
    s, st = sim(tool, cfg(rate=100_000_000), 10_000, 200_000, 1250)  # 50 Mbit/s offered
    assert st["queue"] == 0 and s["delivered"] == 10_000 and s["lat_max"] < 200_000


def test_next_deadline_and_live_reconfiguration(tool: Path) -> None:
    t0 = 10**9
    out = run(tool, cfg(delay=30 * MS), f"next {t0}", f"push {t0} 100 1", f"next {t0}", f"pop {t0 + 29 * MS}",
              "set 0 0 0 0 0 0 0 0", f"push {t0 + 29 * MS} 100 2", f"pop {t0 + 29 * MS}", f"pop {t0 + 31 * MS}")
    assert out[1] == "next none" and out[2] == "pushed 1"
    nxt = int(out[3].split()[1])
    assert t0 + 30 * MS <= nxt <= t0 + 30 * MS + TICK
    assert out[4] == "end" and out[5] == "ok"
    # after clearing the delay a new frame passes at once; the one in flight keeps its deadline
    assert out[6:] == ["pushed 1", "out 2 100 0", "end", "out 1 100 0", "end"]


@pytest.mark.parametrize("bad", [
    cfg(delay=4_000_000_001), cfg(delay=3_000_000_000, jitter=1_500_000_000), cfg(loss=1_000_001),
    cfg(reorder=2_000_000), cfg(dup=1_000_001), cfg(corrupt=1_000_001), cfg(rate=500_000_000_000),
])
def test_out_of_range_settings_are_refused(tool: Path, bad: str) -> None:
    assert run(tool, bad) == ["einval"]


def test_pool_exhaustion_and_oversize_frames_are_counted(tool: Path) -> None:
    t0 = 10**9
    out = run(tool, cfg(delay=MS, pool=8), *(f"push {t0} 100 {i}" for i in range(10)), f"push {t0} 1515 99",
              "stats")
    st = fields(out[-1])
    assert st["queue"] == 2 and st["tx"] == 1 and st["queued"] == 8 and st["rx"] == 11


def test_long_idle_gap_does_not_lose_the_wheel(tool: Path) -> None:
    t0 = 10**9
    out = run(tool, cfg(delay=3_900 * MS), f"push {t0} 100 1", f"pop {t0 + 3_899 * MS}",
              f"pop {t0 + 60_000 * MS}", f"push {t0 + 60_000 * MS} 100 2", f"pop {t0 + 63_901 * MS}")
    assert out == ["ok", "pushed 1", "end", "out 1 100 0", "end", "pushed 1", "out 2 100 0", "end"]
