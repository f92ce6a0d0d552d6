"""`ipsecemu lab audit --failures` on the default lab (root): every single instance or tunnel
failure keeps the S1 flows off the ER links in clear, and the lab is restored afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.lab.svc_vpn import read_status

from support.paths import REPO  # noqa: E402

# the failure matrix converges on the route agent's view: the static-route S1 (BGP labs: not yet)
ER = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def er_lab(unique_name: str) -> Iterator[str]:
    res = cli("up", str(ER), "--name", unique_name)
    assert res.returncode == 0, res.stdout + res.stderr
    recorded = [(p["pid"], p.get("start_time")) for p in LabState.open(unique_name).data["processes"]]
    try:
        yield unique_name
    finally:
        res = cli("down", unique_name)
        assert res.returncode == 0, res.stderr
        assert [p for p, st in recorded if pid_alive(p, st)] == []


def test_single_failures_keep_s1_encrypted(er_lab: str) -> None:
    res = cli("audit", er_lab, "--failures", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    cols = {c["failure"]: c for c in json.loads(res.stdout)["failures"]}
    assert list(cols) == ["none", "hubgw0 down", "hubgw1 down", "ce-hubgw0 terminated", "ce-hubgw1 terminated"]
    for name, c in cols.items():
        assert c["note"] == "", (name, c["note"])  # applied, converged, restored
        assert c["leaks"] == []
        for f in c["audit"]["flows"]:
            if f["expected"] == "encrypted":
                assert f["observed"] != "clear", (name, f)
            else:
                assert f["observed"] == "clear", (name, f)
    # a terminated tunnel: the other one carries everything, encrypted and delivered
    for name in ("ce-hubgw0 terminated", "ce-hubgw1 terminated"):
        assert all(f["ok"] for f in cols[name]["audit"]["flows"]), name
    # restored: both tunnels up on both ends, no daemon left frozen
    up = read_status(LabState.open(er_lab)).get("tunnels", {})
    assert up and all(up.values()), up
    for p in LabState.open(er_lab).data["processes"]:
        state = open(f"/proc/{p['pid']}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state != "T", p
