"""`ipsecemu lab audit` on running labs (root): verdicts from captures on the ExpressRoute links.
The default lab (S1) passes; S3 passes as declared (clear) and fails with exit status 9 when its
flows are declared encrypted; Ctrl-C/SIGTERM leaves no capture or echo server behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipsecemu.base.errors import CheckFailed
from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.net.netns import pids_in_netns

from support.paths import REPO  # noqa: E402

ER = REPO / "netns-labs" / "er-vwan.yaml"
S3 = REPO / "netns-labs" / "er-vwan-s3.yaml"
EXIT_CHECK_FAILED = CheckFailed.exit_status

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def lab(unique_name: str) -> Iterator[Callable[[Path], str]]:
    """``lab(file)`` brings a lab up under a unique name; always torn down, nothing left alive."""
    recorded: list[tuple[int, int | None]] = []

    def up(path: Path) -> str:
        res = cli("up", str(path), "--name", unique_name)
        assert res.returncode == 0, res.stdout + res.stderr
        recorded.extend((p["pid"], p.get("start_time")) for p in LabState.open(unique_name).data["processes"])
        return unique_name

    try:
        yield up
    finally:
        res = cli("down", unique_name)
        assert res.returncode == 0, res.stderr
        assert [p for p, st in recorded if pid_alive(p, st)] == []


def _audit(name: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    res = cli("audit", name, "--json", *extra)
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        pytest.fail(f"no JSON from lab audit (rc {res.returncode}): {res.stdout}{res.stderr}")
    return res, doc


def _rows(doc: dict) -> dict[tuple[str, str, str, int | None], dict]:
    return {(f["from"], f["to"], f["proto"], f["port"]): f for f in doc["flows"]}


def _no_leftovers(name: str) -> None:
    """The audit's tcpdumps and echo servers are gone: none recorded, none in the host netns."""
    st = LabState.open(name)
    assert [p for p in st.data["processes"] if p["role"] == "capture"] == []
    for node in ("onprem1", "onprem2", "spoke1", "ce", "hub"):
        for pid in pids_in_netns(f"{name}-{node}"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # exited meanwhile
                continue
            assert b"tcpdump" not in cmd and b"SOCK_STREAM" not in cmd, (node, cmd)


def test_er_vwan_audit_passes(lab: Callable[[Path], str], tmp_path: Path) -> None:
    name = lab(ER)
    t0 = time.monotonic()
    res, doc = _audit(name)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc["ok"] is True
    rows = _rows(doc)
    links = {"ce:msee1", "ce:msee2", "hub:msee1", "hub:msee2"}
    assert set(doc["captures"]) == links
    for key in [("onprem1", "spoke1", "icmp", None), ("spoke1", "onprem1", "icmp", None),
                ("onprem1", "spoke1", "tcp", 8080), ("spoke1", "onprem1", "udp", 5000)]:
        f = rows[key]
        assert (f["expected"], f["observed"], f["delivered"]) == ("encrypted", "encrypted", True), f
        assert sum(e["encrypted"] for e in f["evidence"].values()) > 0
        assert sum(e["clear"] for e in f["evidence"].values()) == 0
    for key in [("onprem2", "spoke1", "icmp", None), ("spoke1", "onprem2", "tcp", 8080)]:
        f = rows[key]
        assert (f["observed"], f["delivered"]) == ("clear", True), f
        assert sum(e["clear"] for e in f["evidence"].values()) > 0
    _no_leftovers(name)
    print(f"lab audit er-vwan: {len(rows)} probes in {took:.1f} s")

    # the table a user reads
    res = cli("audit", name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "audit passed: 10 of 10 flows as expected" in res.stdout
    assert "MISMATCH" not in res.stdout

    # a deliberately wrong expectation on the running lab: onprem2 (ER only) declared encrypted
    wrong = tmp_path / "er-vwan-wrong.yaml"
    wrong.write_text(ER.read_text().replace(
        "{name: er-icmp, from: onprem2, to: spoke1, proto: icmp, expect: clear}",
        "{name: er-icmp, from: onprem2, to: spoke1, proto: icmp, expect: encrypted}"))
    res, doc = _audit(name, "--file", str(wrong))
    assert res.returncode == EXIT_CHECK_FAILED, res.stdout + res.stderr
    bad = [(f["from"], f["to"], f["proto"]) for f in doc["flows"] if not f["ok"]]
    assert bad == [("onprem2", "spoke1", "icmp"), ("spoke1", "onprem2", "icmp")]
    assert "onprem2 -> spoke1 icmp expected encrypted, observed clear" in res.stderr

    # SIGTERM mid-audit: captures and servers are stopped by PID
    proc = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "audit", name], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # signal once the audit is capturing (its handler is in place by then, whatever the load)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not any(
            p["role"] == "capture" for p in LabState.open(name).data["processes"]):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err  # 0 only if it finished first
    _no_leftovers(name)


def test_s3_audit_shows_clear_and_fails_when_encryption_is_expected(lab: Callable[[Path], str],
                                                                    tmp_path: Path) -> None:
    name = lab(S3)
    res, doc = _audit(name)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(doc)
    # the request enters the tunnels, the answer (with the same marker) comes back over ER in clear
    f = rows[("onprem1", "spoke1", "icmp", None)]
    assert (f["observed"], f["delivered"]) == ("clear", True)
    assert sum(e["encrypted"] for e in f["evidence"].values()) > 0
    assert sum(e["clear"] for e in f["evidence"].values()) > 0
    assert rows[("spoke1", "onprem1", "tcp", 8080)]["observed"] == "clear"

    # the user's expectation (S1 thinking) on the S3 routing: exit 9 with the rows named
    wrong = tmp_path / "s3-expects-encrypted.yaml"
    text = "\n".join(ln.replace("expect: clear", "expect: encrypted") if "name: s3-" in ln else ln
                     for ln in S3.read_text().splitlines())
    wrong.write_text(text)
    res = cli("audit", name, "--file", str(wrong))
    assert res.returncode == EXIT_CHECK_FAILED, res.stdout + res.stderr
    assert "audit FAILED: 2 of 6 flows as expected" in res.stdout
    mism = [ln for ln in res.stdout.splitlines() if "MISMATCH" in ln]
    assert len(mism) == 4 and all("encrypted" in ln and "clear" in ln for ln in mism)
    assert "expected encrypted, observed clear" in res.stderr
    _no_leftovers(name)
