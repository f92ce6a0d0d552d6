"""`ipsecemu bench ike` without root: percentiles, only responder-confirmed setups count, clear errors
for bad options and a missing charon (moved from tests/interop: they need no root)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ipsecemu.bench.ike import Result, Run, make_result, percentile, summarise
from ipsecemu.cli import cli

KEYS = {"pair", "group", "setups", "seconds", "rate", "p50_ms", "p95_ms", "ratio_to_strongswan",
        "rounds", "ratio_min", "ratio_max", "ratios", "rate_rounds"}


def test_percentile_nearest_rank() -> None:
    vals = [float(v) for v in range(1, 101)]
    assert percentile(vals, 50) == 50.0 and percentile(vals, 95) == 95.0
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) == 0.0


def test_only_setups_the_responder_confirmed_count() -> None:
    r = Run({"aa": 0.010, "bb": 0.020, "cc": 0.030, "dd": 0.500}, 2.0, 1)
    res, unconfirmed = make_result("ipsecemu-ipsecemu", "ecp256", r, {"aa", "bb", "cc", "zz"})
    assert (res.setups, unconfirmed) == (3, 1)
    assert res.rate == 1.5 and res.p95_ms == 30.0  # the unconfirmed 500 ms outlier is not in it
    assert isinstance(res, Result) and set(res.as_dict()) == KEYS


@pytest.mark.parametrize(("args", "msg"), [
    (["--duration", "2", "--count", "5"], "exclude each other"),
    (["--groups", "ecp256,modp1024"], "modp1024"),
    (["--groups", ","], "empty list"),
    (["--concurrency", "0"], "--concurrency"),
    (["--count", "0"], "--count"),
    (["--duration", "-1"], "--duration"),
])
def test_bad_options_give_a_clear_error(args: list[str], msg: str) -> None:
    res = CliRunner().invoke(cli, ["bench", "ike", *args])
    assert res.exit_code == 2, res.output
    assert msg in res.output and "Traceback" not in res.output


def test_missing_charon_is_a_clear_error() -> None:
    env = {**os.environ, "IPSECEMU_CHARON": "/nonexistent/charon"}
    res = subprocess.run([sys.executable, "-m", "ipsecemu", "bench", "ike", "--quick"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert res.returncode == 1
    assert "Error:" in res.stderr and ("charon not installed" in res.stderr or "needs root" in res.stderr)
    assert "Traceback" not in res.stderr


def test_listed_under_bench() -> None:
    res = CliRunner().invoke(cli, ["bench", "--help"])
    assert res.exit_code == 0 and "ike" in res.output
    res = CliRunner().invoke(cli, ["bench", "ike", "--help"])
    assert res.exit_code == 0 and "--concurrency" in res.output


def test_rounds_summary_against_the_same_rounds_strongswan() -> None:
    def rnd(ours: float, swan: float) -> list[Result]:
        return [Result("ipsecemu-ipsecemu", "ecp256", int(ours), 1.0, ours, 5.0, 9.0),
                Result("strongswan-strongswan", "ecp256", int(swan), 1.0, swan, 7.0, 12.0)]

    ours, swan = summarise([rnd(300, 100), rnd(150, 60), rnd(420, 120)])
    assert ours.ratios == [3.0, 2.5, 3.5] and (ours.ratio_min, ours.ratio_max) == (2.5, 3.5)
    assert ours.ratio_to_strongswan == 3.0 and ours.rate == 300 and ours.rounds == 3
    assert ours.rate_rounds == [300, 150, 420]
    assert swan.ratio_to_strongswan == 1.0 and swan.rate == 100  # its median-rate round
    assert set(ours.as_dict()) == KEYS
