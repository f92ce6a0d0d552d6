"""`ipsecemu bench lab`: all five paths measured end to end in one run (iperf3 through real
strongSwan and ipsecemu gateway daemons), JSON + PNG written, nothing left behind after a run or a
SIGTERM, clear errors for bad options and for a non-root user."""

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
from click.testing import CliRunner

from ipsecemu.bench.lab import PATHS, Cell, add_ratios, format_table, target, write_chart
from ipsecemu.cli import cli
from ipsecemu.lab.strongswan import charon_available

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


def as_nobody() -> list[str]:
    """argv prefix running a command as user nobody; skips when nobody cannot import ipsecemu
    (e.g. a checkout under /root)."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        r = subprocess.run([*argv, sys.executable, "-c", "import ipsecemu.cli"], capture_output=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("setpriv not installed")
    if r.returncode != 0:
        pytest.skip("user nobody cannot read this checkout/venv")
    return argv


# --------------------------------------------------------------------------- no root needed
@pytest.mark.parametrize("args,msg", [
    (["--streams", "0"], "each stream count must be 1..128"),
    (["--streams", "one"], "comma-separated list of stream counts"),
    (["--ciphers", "des"], "unknown cipher des"),
    (["--ciphers", ","], "unknown cipher (none)"),
    (["--duration", "0"], "--duration"),
])
def test_bad_options_are_clear_errors(args: list[str], msg: str) -> None:
    r = CliRunner().invoke(cli, ["bench", "lab", *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_non_root_is_told_plainly() -> None:
    if os.geteuid() != 0:
        argv = [sys.executable, "-m", "ipsecemu", "bench", "lab", "--quick"]
    else:  # drop to nobody for this one process
        argv = [*as_nobody(), sys.executable, "-m", "ipsecemu", "bench", "lab", "--quick"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "needs root" in r.stderr and "Traceback" not in r.stderr


def test_ratios_target_table_and_chart(tmp_path: Path) -> None:
    cells = [Cell("plain-nogso", "", 1, gbps=1.0), Cell("strongswan", "aes128gcm16", 1, gbps=0.4),
             Cell("ipsecemu", "aes128gcm16", 1, gbps=1.3), Cell("ipsecemu-strongswan", "aes128gcm16", 1, gbps=0.5),
             Cell("strongswan", "aes256gcm16", 1, gbps=0.5), Cell("ipsecemu", "aes256gcm16", 1, error="boom")]
    add_ratios(cells, ("aes128gcm16", "aes256gcm16"))
    assert [c.ratio for c in cells] == [2.5, 1.0, 3.25, 1.25, 1.0, None]
    t = target(cells)
    assert t["ratios"] == {"aes128gcm16/1": 3.25, "aes256gcm16/1": None} and t["met"] is False
    assert target(cells[:4])["met"] is True
    cells[1].udp_rcvbuf_errors = {"nsR": 12, "nsL": 0}
    cells[2].link_drops = {"nsL:tun0 tx": 7}
    cells[2].host_cpu = {"user": 50.0, "system": 40.0, "softirq": 10.0, "idle": 0.0}
    cells[1].cpu_per_gbps, cells[2].cpu_per_gbps = 200.0, 80.0
    assert target(cells)["cpu_efficiency_vs_strongswan"] == {"aes128gcm16/1": 2.5}
    table = format_table(cells)
    assert "FAILED" in table and "boom" in table and "MISSED" in table and "3.25" in table
    assert "losses: UDP socket full in nsR: 12" in table and "UDP socket full in nsL" not in table
    assert "losses: nsL:tun0 tx dropped 7" in table and " 0%" in table
    assert "CPU per Gbit/s, strongSwan's gateways / ours: aes128gcm16/1 2.50x" in table
    write_chart(cells, tmp_path / "c.png")
    w, h = png_size((tmp_path / "c.png").read_bytes())
    assert w >= 600 and h >= 400


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
        assert set(row["host_cpu"]) == {"user", "system", "softirq", "idle"}
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
