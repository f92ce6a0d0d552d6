"""`ipsecemu bench ike`: the three pairs end to end in netns (ipsecemu workers, charon via vici),
setups counted only when the responder saw them too, ratios over alternating rounds, cleanup on
exit / Ctrl-C / SIGTERM.  The parts that need no root: tests/unit/bench/test_bench_ike_cli.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ipsecemu.bench.ike import GROUPS, PAIRS, run
from ipsecemu.strongswan.charon import charon_available

KEYS = {"pair", "group", "setups", "seconds", "rate", "p50_ms", "p95_ms", "ratio_to_strongswan",
        "rounds", "ratio_min", "ratio_max", "ratios", "rate_rounds"}
NO_CHARON = charon_available()
needs_charon = pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is not running
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


# --------------------------------------------------------------------------- the lab runs
@pytest.mark.root
@needs_charon
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_json_all_pairs() -> None:
    before = netns_names()
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "ipsecemu", "bench", "ike", "--quick", "--json", "--rounds", "2"],
                         capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert {(r["pair"], r["group"]) for r in rows} == {(p, g) for p in PAIRS for g in GROUPS}
    for r in rows:
        assert set(r) == KEYS
        assert r["setups"] > 0 and r["rate"] > 0 and r["seconds"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"]
        assert r["rate"] == pytest.approx(r["setups"] / r["seconds"], rel=0.02)
        assert r["ratio_to_strongswan"] > 0
    # [structure] 10: alternating rounds; the ratio is the median round's, to strongSwan in that round
    for r in rows:
        assert r["rounds"] == 2 and len(r["rate_rounds"]) == 2 and len(r["ratios"]) == 2
        assert r["rate"] in r["rate_rounds"]
        assert r["ratio_min"] <= r["ratio_to_strongswan"] <= r["ratio_max"]
        assert r["ratio_to_strongswan"] == min(r["ratios"])  # the lower median of two
    assert "bench ike:" in res.stderr and "bench ike:" not in res.stdout  # progress on stderr only
    assert took < 70, f"--quick --rounds 2 took {took:.1f}s"
    assert not {n for n in netns_names() - before if n.startswith("bi")}


@pytest.mark.root
@needs_charon
@pytest.mark.timeout(60)
def test_count_setups_verified_on_both_sides() -> None:
    """Exactly N setups per pair; the responder of each pair saw every counted one established
    (ipsecemu: ChildSaEstablished; charon: vici child-updown with ESTABLISHED / INSTALLED), the
    Child SAs were installed in and removed from our SAD, the IKE SAs deleted afterwards, and
    every process and netns is gone at the end."""
    checks: dict = {}
    n = 12
    results = run(groups=["ecp256"], duration=None, count=n, concurrency=4, progress=lambda m: None,
                  checks=checks, rounds=1)
    assert [r.pair for r in results] == list(PAIRS)
    for r in results:
        assert r.setups == n, r  # every one confirmed by the responder
        assert r.p50_ms <= r.p95_ms
    # ipsecemu responder: the same IKE SAs (by initiator SPI), and nothing left after the deletes
    (resp,) = checks["ipsecemu_responder"]
    assert len(set(resp["established"])) == n and resp["sas"] == 0
    # each Child SA went into the data plane's SAD on both sides, and out again with its IKE SA
    assert (resp["installed"], resp["sad"]) == (n, 0)
    for out in checks["ipsecemu_initiator"]:
        assert (out["installed"], out["sad"], out["leftover"], out["failed"]) == (n, 0, 0, 0)
    for who in ("charon_responder_samples", "charon_initiator_samples"):
        sample = checks[who][0]
        assert sample["state"] == "ESTABLISHED" and sample["child-states"] == ["INSTALLED"], sample
        assert re.fullmatch(r"[0-9a-f]{16}", sample["initiator-spi"])
    assert all(pid_gone(p) for p in checks["pids"]) and len(checks["pids"]) == 5
    assert not set(checks["netns"]) & netns_names()


@pytest.mark.root
@needs_charon
@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_cleans_up(sig: int) -> None:
    """Interrupted while charon and our initiator run: both are stopped and the netns removed."""
    proc = subprocess.Popen([sys.executable, "-m", "ipsecemu", "bench", "ike", "--duration", "3",
                             "--groups", "ecp256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "ipsecemu initiator pid" in line:
                break
        text = "".join(seen)
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        spaces = set(re.findall(r" in (bi\w+)", text))
        assert len(pids) == 4 and len(spaces) == 2, text  # 2 workers, charon, new initiator
        time.sleep(0.5)  # mid-run: pair 2 measures for 3 s
        os.kill(proc.pid, sig)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr.read()
    assert all(pid_gone(p) for p in pids)
    assert not spaces & netns_names()
