"""`ipsecemu lab audit --failures` (root): on the default lab every single instance, tunnel or ER
link failure keeps the S1 flows off the ER links in clear, the whole VPN gateway down sends them back
over ER in clear (marked, exit 9), and the lab is restored afterwards; on the MACsec lab a MACsec link
down never lets a flow out in clear."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.lab.svc_vpn import read_status

from support.paths import REPO  # noqa: E402

# the failure matrix converges on the route agent's view: the static-route S1
ER = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"
MACSEC = REPO / "netns-labs" / "er-direct-macsec.yaml"

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _lab(file: Path, name: str) -> Iterator[str]:
    res = cli("up", str(file), "--name", name)
    assert res.returncode == 0, res.stdout + res.stderr
    recorded = [(p["pid"], p.get("start_time")) for p in LabState.open(name).data["processes"]]
    try:
        yield name
    finally:
        res = cli("down", name)
        assert res.returncode == 0, res.stderr
        assert [p for p, st in recorded if pid_alive(p, st)] == []


@pytest.fixture
def er_lab(unique_name: str) -> Iterator[str]:
    yield from _lab(ER, unique_name)


@pytest.fixture(scope="module")
def macsec_failure() -> Iterator[dict[str, Any]]:
    """er-direct-macsec with one MACsec end frozen and resumed (the ce:msee1 column of --failures)."""
    name = "a2m" + uuid.uuid4().hex[:5]
    gen = _lab(MACSEC, name)
    next(gen)
    try:
        res = cli("audit", name, "--failures", "--only", "MACsec ce:msee1", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        yield {c["failure"]: c for c in json.loads(res.stdout)["failures"]}
    finally:
        next(gen, None)


def test_failure_matrix_s1(er_lab: str) -> None:
    # one failure of each kind (the full 9-failure matrix takes ~3 min; docs/notes-audit.md has it)
    res = cli("audit", er_lab, "--failures", "--json", "--only", "hubgw0 down", "--only", "+",
              "--only", "ce-hubgw1", "--only", "link ce:msee1", "--only", "link hub:msee2")
    # the whole VPN gateway down: ER carries 10.0.1.0/24 back in clear -> a marked leak, exit 9
    assert res.returncode == 9, res.stdout + res.stderr
    assert "expected encrypted, went clear" in res.stderr and "when hubgw0+hubgw1 down" in res.stderr
    cols = {c["failure"]: c for c in json.loads(res.stdout)["failures"]}
    assert list(cols) == ["none", "hubgw0 down", "hubgw0+hubgw1 down", "ce-hubgw1 terminated", "link ce:msee1 down",
                          "link hub:msee2 down"]
    both = cols.pop("hubgw0+hubgw1 down")
    assert both["note"] == "", both["note"]
    assert both["leaks"], both  # at least spoke1 -> onprem1 rides ER in clear
    assert any(f["from"] == "spoke1" and f["expected"] == "encrypted" and f["observed"] == "clear"
               for f in both["audit"]["flows"])
    for name, c in cols.items():
        assert c["note"] == "", (name, c["note"])  # applied, converged, restored
        assert c["leaks"] == []
        for f in c["audit"]["flows"]:
            if f["expected"] == "encrypted":
                assert f["observed"] != "clear", (name, f)
            elif name == "none" or "terminated" in name or "hubgw" in name:
                assert f["observed"] == "clear", (name, f)
            else:  # an ER link down in a static lab: what ECMP still hashes into it is lost
                assert f["observed"] in ("clear", "not delivered", "blocked"), (name, f)
    # a terminated tunnel: the other one carries everything, encrypted and delivered
    assert all(f["ok"] for f in cols["ce-hubgw1 terminated"]["audit"]["flows"])
    # restored: the plain audit passes again, both tunnels up on both ends, no daemon left frozen
    res = cli("audit", er_lab)
    assert res.returncode == 0, res.stdout + res.stderr
    up = read_status(LabState.open(er_lab)).get("tunnels", {})
    assert up and all(up.values()), up
    for p in LabState.open(er_lab).data["processes"]:
        state = open(f"/proc/{p['pid']}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state != "T", p


def test_macsec_link_down_never_clear(macsec_failure: dict[str, Any]) -> None:
    assert list(macsec_failure) == ["none", "MACsec ce:msee1 down"]
    c = macsec_failure["MACsec ce:msee1 down"]
    assert c["audit"] is not None and c["leaks"] == []
    seen = {f["observed"] for f in c["audit"]["flows"]}
    assert "clear" not in seen and seen <= {"encrypted", "not delivered", "blocked"}, seen
    assert seen & {"not delivered", "blocked"}, seen  # ECMP hashes some flows into the dead link


def test_macsec_link_restored(macsec_failure: dict[str, Any]) -> None:
    assert macsec_failure["MACsec ce:msee1 down"]["note"] == ""
