"""`ipsecemu bench dataplane`: JSON shape, numbers that mean something, the OpenSSL comparison,
both backends, option errors, and the lazily loaded `bench ike` / `bench lab`."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner

from ipsecemu.bench.dataplane import SUITES, parse_openssl_speed, run
from ipsecemu.cli import cli
from ipsecemu.dataplane import BackendUnavailable, backend

KEYS = {"protocol", "suite", "op", "size", "batch", "pps", "gbps", "openssl_gbps", "ratio"}


def native_available() -> bool:
    try:
        backend("native")
    except BackendUnavailable:
        return False
    return True


def bench_json(*args: str) -> list[dict]:
    result = CliRunner().invoke(cli, ["bench", "dataplane", "--json", *args])
    assert result.exit_code == 0, result.output
    start = result.stdout.index("[")  # progress goes to stderr
    return json.loads(result.stdout[start:])


@pytest.mark.parametrize("be", ["reference", "native"])
def test_json_rows_cover_every_suite_and_op(be: str) -> None:
    if be == "native" and not native_available():
        pytest.skip("native backend not built")
    rows = bench_json("--backend", be, "--sizes", "64", "--batches", "1,8", "--duration", "0.01")
    assert all(KEYS <= set(r) for r in rows)
    expected = {(s.protocol, s.name, op, size, batch)
                for s in SUITES for op in (("encap", "decap") if s.protocol == "esp" else ("protect", "validate"))
                for size in (64,) for batch in (1, 8)}
    assert {(r["protocol"], r["suite"], r["op"], r["size"], r["batch"]) for r in rows} == expected
    for r in rows:
        assert r["pps"] > 0 and r["backend"] == be
        assert r["gbps"] == pytest.approx(r["pps"] * r["size"] * 8 / 1e9)
        compared = r["suite"] in {s.name for s in SUITES if s.openssl}  # GCM suites and 3DES
        if compared and shutil.which("openssl"):
            assert r["openssl_gbps"] > 0
            assert r["ratio"] == pytest.approx(r["gbps"] / r["openssl_gbps"])
        if not compared:
            assert r["ratio"] is None and r["openssl_gbps"] is None


def test_quick_table_and_progress() -> None:
    result = CliRunner().invoke(cli, ["bench", "dataplane", "--quick", "--duration", "0.02"])
    assert result.exit_code == 0, result.output
    assert "bench: esp aes-gcm-128 1400 B x 32" in result.stderr
    table = result.stdout.splitlines()
    assert table[0].split() == ["protocol", "suite", "op", "size", "batch", "pkts/s", "Gbit/s", "openssl", "ratio",
                                "min-max"]
    assert len(table) == 2 + 12  # 6 suites x 2 ops at one size and batch


def test_ratio_is_the_median_of_alternating_rounds() -> None:
    """[structure] 10: OpenSSL and the transform alternate; the reported ratio is the (lower) median of
    the per-round ratios, from one real round, with the min-max over all rounds."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    rows = bench_json("--backend", "reference", "--sizes", "64", "--batches", "1", "--duration", "0.01",
                      "--rounds", "3")
    gcm = [r for r in rows if "gcm" in r["suite"]]
    assert gcm
    for r in gcm:
        assert r["rounds"] == 3 and len(r["ratios"]) == 3 and len(r["gbps_rounds"]) == 3
        assert r["ratio"] == pytest.approx(sorted(r["ratios"])[1])
        assert r["ratio_min"] == min(r["ratios"]) <= r["ratio"] <= r["ratio_max"] == max(r["ratios"])
        assert r["gbps"] in r["gbps_rounds"]
    stderr = CliRunner().invoke(cli, ["bench", "dataplane", "--rounds", "0"]).output
    assert "--rounds" in stderr


def test_native_is_faster_than_reference_for_gcm() -> None:
    """The C path must beat per-packet Python at 1400 B in batches (the reason it exists)."""
    if not native_available():
        pytest.skip("native backend not built")
    kw = dict(suites=SUITES[:1], sizes=(1400,), batches=(32,), duration=0.05, openssl_seconds=0)
    fast = {r.op: r.pps for r in run(backend="native", **kw)}
    slow = {r.op: r.pps for r in run(backend="reference", **kw)}
    assert fast["encap"] > slow["encap"] and fast["decap"] > slow["decap"]


def test_parse_openssl_speed() -> None:
    out = "+DT:aes-128-gcm:1:1400\n+R:1234:aes-128-gcm:1.0\n+H:1400\n+F:25:AES-128-GCM:1795553200.00\n"
    assert parse_openssl_speed(out, "aes-128-gcm") == pytest.approx(1795553200 * 8 / 1e9)
    assert parse_openssl_speed(out, "aes-256-gcm") is None
    assert parse_openssl_speed("garbage", "aes-128-gcm") is None


@pytest.mark.parametrize(("args", "needle"), [
    (["--sizes", "abc"], "comma-separated list of integers"),
    (["--sizes", "0"], "each value must be 14..9000"),
    (["--batches", "0"], "each value must be 1..4096"),
    (["--duration", "-1"], "--duration"),
    (["--backend", "fast"], "--backend"),
])
def test_option_errors(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "dataplane", *args])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_lazy_subcommands_hidden_until_their_modules_exist() -> None:
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "dataplane" in result.output
    for name in ("ike", "lab"):
        present = importlib.util.find_spec(f"ipsecemu.bench.{name}") is not None
        listed = any(line.split()[:1] == [name] for line in result.output.splitlines())
        assert listed == present
        sub = CliRunner().invoke(cli, ["bench", name, "--help"])
        assert (sub.exit_code == 0) == present
