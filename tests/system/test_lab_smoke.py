"""`ipsecemu lab up --smoke` (root): the smoke check is the lab's audit, with a reason per flow.
It passes on S3 (clear is the documented outcome there), on an IPv6-underlay lab (ESP over IPv6 is
seen and decrypted) and on the MACsec lab (MACsec-protected frames are encrypted, not "in clear");
a wrong expectation fails with exit status 9, the lab left up and the command that removes it; a
lab without audit: gets pings with their reasons."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.lab.state import LabState, LabStateError

from support.paths import REPO  # noqa: E402

pytestmark = pytest.mark.root

LABS = REPO / "netns-labs"
V6 = REPO / "tests" / "system" / "labs" / "pair-v6.yaml"


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def smoke_up(unique_name: str) -> Iterator[tuple[str, list[subprocess.CompletedProcess[str]]]]:
    """``lab up FILE --name N --smoke`` via ``run(FILE)``; the lab is removed afterwards either way."""
    runs: list[subprocess.CompletedProcess[str]] = []
    try:
        yield unique_name, runs
    finally:
        cli("down", unique_name)
        with pytest.raises(LabStateError):
            LabState.open(unique_name)


def _up(name: str, file: Path, runs: list[subprocess.CompletedProcess[str]]) -> subprocess.CompletedProcess[str]:
    res = cli("up", str(file), "--name", name, "--smoke")
    runs.append(res)
    return res


def _smoke_lines(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if re.match(r"\s*smoke: \S+ -> \S+ ", ln)]


def test_s3_clear_is_the_documented_outcome(smoke_up: tuple[str, list[subprocess.CompletedProcess[str]]]) -> None:
    name, runs = smoke_up
    res = _up(name, LABS / "er-vwan-s3.yaml", runs)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _smoke_lines(res.stdout)
    assert len(lines) == 6, res.stdout  # 3 flows, both directions
    for ln in lines:
        assert ": ok: expected clear (as the lab file declares), observed clear: the marker crossed untrusted " \
               "links in clear: " in ln, ln
    assert "smoke: audit passed: 6 of 6 flows as expected" in res.stdout


def test_ipv6_underlay_esp_is_seen(smoke_up: tuple[str, list[subprocess.CompletedProcess[str]]]) -> None:
    name, runs = smoke_up
    res = _up(name, V6, runs)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _smoke_lines(res.stdout)
    assert len(lines) == 6, res.stdout
    for ln in lines:
        assert ": ok: expected encrypted, observed encrypted: delivered; the marker only showed after removing " \
               "ESP with the lab's keys: gwa:wan " in ln, ln
        # each marker crosses twice (there and echoed back), so both frames must be decrypted: over this
        # underlay the TCP echo leaves in a UDP GSO train, which the IPv4-only splitter left an ICV failure
        frames = int(re.search(r"gwa:wan (\d+) frames?", ln).group(1))  # type: ignore[union-attr]
        assert frames >= 2, ln
    assert "smoke: audit passed: 6 of 6 flows as expected" in res.stdout


def test_macsec_is_encrypted_not_clear(smoke_up: tuple[str, list[subprocess.CompletedProcess[str]]]) -> None:
    name, runs = smoke_up
    res = _up(name, LABS / "er-direct-macsec.yaml", runs)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _smoke_lines(res.stdout)
    assert len(lines) == 8, res.stdout
    for ln in lines:
        assert ": ok: expected encrypted, observed encrypted: " in ln and "(MACsec port)" in ln, ln
        assert "in clear" not in ln
    assert "smoke: audit passed: 8 of 8 flows as expected" in res.stdout


def test_wrong_expectation_fails_and_leaves_the_lab_up(
        smoke_up: tuple[str, list[subprocess.CompletedProcess[str]]], tmp_path: Path) -> None:
    name, runs = smoke_up
    wrong = tmp_path / "pair-wrong.yaml"  # pair with its udp flow declared clear: it is encrypted
    wrong.write_text((LABS / "pair.yaml").read_text().replace(
        "proto: udp, port: 5201, expect: encrypted", "proto: udp, port: 5201, expect: clear"))
    res = _up(name, wrong, runs)
    assert res.returncode == 9, res.stdout + res.stderr
    assert re.search(r"smoke: left -> right 10\.2\.0\.10 udp/5201: FAILED: expected clear, observed encrypted: "
                     r"delivered; the marker only showed after removing ESP", res.stdout), res.stdout
    assert "smoke: left -> right 10.2.0.10 icmp: ok" in res.stdout
    assert "smoke: audit FAILED: 2 of 4 flows as expected" in res.stdout
    assert "lab left up" in res.stderr and re.search(rf"lab down {name}\)?$", res.stderr.strip()), res.stderr
    LabState.open(name)  # still up


def test_lab_without_audit_pings_with_reasons(
        smoke_up: tuple[str, list[subprocess.CompletedProcess[str]]], tmp_path: Path) -> None:
    name, runs = smoke_up
    lab = tmp_path / "plain.yaml"
    lab.write_text("""name: plain
nodes:
  a: {kind: host, addresses: {e: [10.66.0.2/24]}, routes: [{dst: default, via: 10.66.0.1}]}
  r: {kind: router, addresses: {a: [10.66.0.1/24], b: [10.66.1.1/24]}}
  b: {kind: host, addresses: {e: [10.66.1.2/24]}}
links:
  - endpoints: ["a:e", "r:a"]
  - endpoints: ["r:b", "b:e"]
""")  # b has no route back to a: a -> b gets no replies, b -> a has no route
    res = _up(name, lab, runs)
    assert res.returncode == 9, res.stdout + res.stderr
    assert "smoke: the lab declares no 'audit:'; pinging between its hosts" in res.stdout
    assert "smoke: a -> b (10.66.1.2): FAILED (0/2 replies (no route back, or dropped on the way))" in res.stdout
    assert re.search(r"smoke: b -> a \(10\.66\.0\.2\): FAILED \(.*(unreachable|0/2 replies)", res.stdout), res.stdout
    assert f"lab down {name}" in res.stderr
