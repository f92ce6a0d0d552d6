"""`ipsecemu bench lab` without root: clear errors for bad options and for a non-root user, and the
ratios / 3x target / table / chart of a set of cells (moved from tests/interop: they need no root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.bench.lab import Cell, add_ratios, format_table, target, write_chart
from ipsecemu.cli import cli

from support.nonroot import non_root_prefix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def as_nobody() -> list[str]:
    """argv prefix running a command as user nobody, wherever this checkout was cloned."""
    return non_root_prefix()


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
