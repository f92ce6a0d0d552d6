"""`ipsecemu interop`: the full ipsecemu <-> strongSwan matrix runs and every supported cell passes
(real charon + kernel-libipsec, real pings), a broken case is a ✗ with a reason (not a crash),
nothing is left behind, and option/user mistakes get clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.cli import cli
from ipsecemu.interop.matrix import (
    CASES,
    COLUMNS,
    PREFIX,
    Case,
    Cell,
    check_proposal,
    format_matrix,
    run_cell,
)
from ipsecemu.strongswan.charon import charon_available

from support.nonroot import non_root_prefix

NO_CHARON = charon_available()


def our_netns() -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(PREFIX)}
    except FileNotFoundError:
        return set()


def our_charons() -> set[int]:
    """charon processes started for interop cells (their config lives in /tmp/charon-ix...)."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"STRONGSWAN_CONF=/tmp/charon-" + PREFIX.encode() in env:
            out.add(int(pid))
    return out


def as_nobody() -> list[str]:
    """argv prefix running a command as user nobody, wherever this checkout was cloned."""
    return non_root_prefix()


# --------------------------------------------------------------------------- no root needed
@pytest.mark.parametrize("args,msg", [
    (["--cases", "nope"], "unknown case nope"),
    (["--cases", ","], "unknown case (none)"),
    (["--initiator", "bob"], "'bob' is not one of"),
])
def test_bad_options_are_clear_errors(args: list[str], msg: str) -> None:
    r = CliRunner().invoke(cli, ["interop", *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_non_root_is_told_plainly() -> None:
    argv = [sys.executable, "-m", "ipsecemu", "interop", "--quick"]
    if os.geteuid() == 0:
        argv = [*as_nobody(), *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 5 and "needs root" in r.stderr and "Traceback" not in r.stderr


def test_matrix_table_layout() -> None:
    cells = [Cell("aes128-sha1-modp2048", "ipsecemu", True, seconds=0.4),
             Cell("aes128-sha1-modp2048", "charon", False, reason="charon negotiated MODP_1024, expected MODP_2048"),
             Cell("dpd", "ipsecemu", True, seconds=1.0), Cell("dpd", "charon", True, seconds=1.5)]
    text = format_matrix(cells, width=30)
    lines = text.splitlines()
    assert "ipsecemu→charon" in lines[0] and "charon→ipsecemu" in lines[0]
    assert lines[2].startswith("aes128-sha1-modp2048") and "✓ 0.4s" in lines[2] and "✗ charon negotiated" in lines[2]
    assert lines[2].endswith("…")  # the reason is cut to the column width
    assert lines[3].count("✓") == 2 and lines[-1] == "3/4 cells passed"


# --------------------------------------------------------------------------- the real matrix
@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
def test_quick_json_full_matrix_passes() -> None:
    before_ns, before_charons = our_netns(), our_charons()
    r = subprocess.run([sys.executable, "-m", "ipsecemu", "interop", "--quick", "--json"],
                       capture_output=True, text=True, timeout=600)
    rep = json.loads(r.stdout)
    cells = rep["cells"]
    assert [(c["case"], c["initiator"]) for c in cells] == [(k.name, col) for k in CASES for col in COLUMNS]
    failed = [(c["case"], c["initiator"], c["reason"]) for c in cells if not c["ok"]]
    assert not failed, failed
    assert r.returncode == 0 and rep["passed"] == rep["total"] == 22
    # every cell sent data through charon's libipsec both ways
    assert all(tuple(c["pings"]) == (1, 1) for c in cells)
    # each cell stays within its bound
    assert all(0 < c["seconds"] < 40 for c in cells)
    assert "✓" in r.stderr  # progress on stderr, JSON alone on stdout
    assert our_netns() <= before_ns and our_charons() <= before_charons


@pytest.mark.root
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
@pytest.mark.parametrize("initiator", list(COLUMNS))
def test_broken_case_is_a_cross_with_a_reason(initiator: str) -> None:
    """ESN on our side: libipsec cannot do it, charon refuses the CHILD_SA; the cell says so."""
    before = our_netns()
    bad = Case("esn", "aes128gcm16-prfsha256-ecp256", "aes128gcm16-esn", check_proposal)
    cell = asyncio.run(run_cell(bad, initiator, pings=1, limit=20))
    assert not cell.ok and cell.initiator == initiator
    assert "CHILD_SA" in cell.reason or "timed out" in cell.reason, cell.reason
    assert cell.seconds < 20
    assert our_netns() <= before


@pytest.mark.root
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
def test_cases_option_runs_only_those_rows() -> None:
    r = subprocess.run([sys.executable, "-m", "ipsecemu", "interop", "--cases", "dpd", "--initiator", "charon"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["case", "charon→ipsecemu"]
    assert lines[2].startswith("dpd") and "✓" in lines[2] and lines[-1] == "1/1 cells passed"


@pytest.mark.root
@pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")
def test_sigterm_mid_cell_cleans_up() -> None:
    """SIGTERM while a cell runs: exit 130, that cell's netns and charon are gone."""
    before_ns, before_charons = our_netns(), our_charons()
    p = subprocess.Popen([sys.executable, "-m", "ipsecemu", "interop", "--cases", "child-rekey"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (our_netns() - before_ns and our_charons() - before_charons):
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # into the cell: SAs up, rekey under way
        os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert our_netns() <= before_ns and our_charons() <= before_charons
