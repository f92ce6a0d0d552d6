"""`ipsecemu bench lab`: all five paths measured end to end in one run (iperf3 through real
strongSwan and ipsecemu gateway daemons) in alternating rounds, JSON + PNG written, nothing left
behind after a run or a SIGTERM.  The parts that need no root: tests/unit/bench/test_bench_lab_cli.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsecemu.bench.lab import PATHS
from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # a zombie is not running


def ours_left(progress: str) -> set[str]:
    """Netns of this run's topology still present (other tests may create netns meanwhile)."""
    m = re.search(r"topology (bl[0-9a-f]+)L/R", progress)
    assert m, progress
    return {n for n in netns_names() if n.startswith(m.group(1))}


def pids_in(progress: str) -> list[int]:
    return [int(p) for p in re.findall(r"(?:charon|ipsecemu) (?:left|right) (\d+)", progress)]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --------------------------------------------------------------------------- the real lab
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
def test_quick_json_all_paths(tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "ipsecemu", "bench", "lab", "--quick", "--json", "--out", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    rows = rep["rows"]
    assert [row["path"] for row in rows] == list(PATHS)
    for row in rows:
        assert row["gbps"] > 0 and not row["error"], row
        assert row["streams"] == 1 and row["cipher"] in ("", "aes128gcm16")
        assert row["seconds"] >= 2
    by = {row["path"]: row for row in rows}
    assert by["strongswan"]["ratio"] == 1.0
    # [structure] 10: alternating rounds; the ratio is the median round's, to strongSwan in that round
    assert rep["rounds"] == 5
    for row in rows:
        assert row["rounds"] == 5 and len(row["gbps_rounds"]) == 5 and len(row["ratios"]) == 5
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
        assert row["ratio"] == round(row["gbps"] / row["baseline_gbps"], 2) and row["gbps"] in row["gbps_rounds"]
    # the gateway loops really carried it: their C-loop counters saw at least a second of TCP
    assert set(by["ipsecemu"]["counters"]) == {"left", "right"}
    assert set(by["ipsecemu"]["cpu"]) == {"ipsecemu left", "ipsecemu right"}
    assert set(by["strongswan"]["cpu"]) == {"charon left", "charon right"}
    # CPU per bit of both VPN processes is measured for the VPN paths only
    assert by["plain"]["cpu_per_gbps"] is None and by["ipsecemu"]["cpu_per_gbps"] > 0
    assert by["strongswan"]["cpu_per_gbps"] > 0 and "aes128gcm16/1" in rep["target"]["cpu_efficiency_vs_strongswan"]
    for row in rows:  # the whole box's CPU split adds up
        assert set(row["host_cpu"]) == {"user", "system", "softirq", "idle", "steal"}
        assert 99 <= sum(row["host_cpu"].values()) <= 101
        assert all(v > 0 for v in row["link_drops"].values())
    assert rep["target"]["required"] == 3.0 and "aes128gcm16/1" in rep["target"]["ratios"]
    assert json.loads((out / "lab.json").read_text())["rows"] == rows
    w, h = png_size((out / "lab.png").read_bytes())
    assert w > 0 and h > 0
    # progress went to stderr, the JSON alone to stdout
    assert "tunnel up" in r.stderr and "tunnel up" not in r.stdout
    # nothing left behind
    assert ours_left(r.stderr) == set()
    pids = pids_in(r.stderr)
    assert len(pids) == 6 * rep["rounds"] and all(pid_gone(p) for p in pids)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
def test_sigterm_mid_run_cleans_up(tmp_path: Path) -> None:
    """SIGTERM while a VPN path is being measured: exit 130, no netns, no daemon, no iperf3."""
    p = subprocess.Popen([sys.executable, "-m", "ipsecemu", "bench", "lab", "--quick", "--duration", "8",
                          "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stderr is not None
    os.set_blocking(p.stderr.fileno(), False)
    seen = ""
    deadline = time.monotonic() + 90
    while "strongswan aes128gcm16 1 stream(s): iperf3" not in seen:
        assert p.poll() is None and time.monotonic() < deadline, seen
        seen += (p.stderr.read() or b"").decode()
        time.sleep(0.1)
    time.sleep(1.0)  # iperf3 is running through the charons now
    os.kill(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    seen += err.decode()
    assert p.returncode == 130, seen
    assert "interrupted" in seen and "Traceback" not in seen
    assert ours_left(seen) == set()
    pids = pids_in(seen)
    assert len(pids) == 2 and all(pid_gone(x) for x in pids)
    assert not (tmp_path / "lab.json").exists()  # an interrupted run reports nothing


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed")
def test_profile_says_where_the_gateway_time_goes(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ipsecemu", "bench", "lab", "--quick", "--json", "--profile", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    by = {row["path"]: row for row in json.loads(r.stdout)["rows"]}
    assert by["plain"]["profile"] == {}  # nothing of ours to sample there
    prof = by["ipsecemu"]["profile"]
    # our daemons ran the C module and OpenSSL, and spent time in the tun write path
    assert "_native" in " ".join(prof["by_dso"]) and "libcrypto.so.3" in prof["by_dso"]
    assert any(t["symbol"] == "tun_chr_write_iter" for t in prof["top"]), prof["top"]
    assert "libipsec.so.0.0.0" in by["strongswan"]["profile"]["by_dso"]
