"""`ipsecemu lab audit --failures` on the shipped BGP lab (root): netns-labs/er-vwan.yaml (S1, FRR in
every routing node, BGP inside the tunnels, no route agent).  Convergence is read from FRR
(lab/converge.py): the whole VPN gateway down sends the S1 flows back over ExpressRoute in clear (a
marked leak, exit 9), one instance down keeps them encrypted (BFD moves them to the other one), an ER
link down never lets them out in clear, and afterwards every BGP session is Established again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from ipsecemu.lab import svc_frr
from ipsecemu.lab.audit import LAST_FILE
from ipsecemu.lab.state import LabState, pid_alive

from support.paths import REPO  # noqa: E402

LAB = REPO / "netns-labs" / "er-vwan.yaml"
S1 = ("onprem1", "spoke1")

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def bgp_lab() -> Iterator[str]:
    name = "bgpfail-" + uuid.uuid4().hex[:4]
    res = cli("up", str(LAB), "--name", name)
    assert res.returncode == 0, res.stdout + res.stderr
    recorded = [(p["pid"], p.get("start_time")) for p in LabState.open(name).data["processes"]]
    try:
        yield name
    finally:
        res = cli("down", name)
        assert res.returncode == 0, res.stderr
        assert [p for p, st in recorded if pid_alive(p, st)] == []


def _sessions(name: str) -> dict[str, str]:
    st = LabState.open(name)
    return {f"{n}->{a}": str(p.get("state")) for n in svc_frr.routing_nodes(st)
            for a, p in svc_frr.sessions(svc_frr.instance(st, n)).items()}


def test_failure_matrix_bgp(bgp_lab: str) -> None:
    before = _sessions(bgp_lab)
    assert before and all(s == "Established" for s in before.values()), before
    t0 = time.monotonic()
    res = cli("audit", bgp_lab, "--failures", "--only", "hubgw0 down", "--only", "+", "--only", "link ce:msee1")
    print(f"\n{res.stdout}{res.stderr}--failures (baseline + 3 failures): {time.monotonic() - t0:.1f} s")
    # the whole VPN gateway down: BGP withdraws 10.0.1.0/24 from the hub, ER's /16 carries it in clear
    assert res.returncode == 9, res.stdout + res.stderr
    assert "when hubgw0+hubgw1 down" in res.stderr
    # the matrix as JSON: what the run saved for 'lab graph'
    cols = {c["failure"]: c for c in json.loads((LabState.open(bgp_lab).dir / LAST_FILE).read_text())["failures"]}
    assert list(cols) == ["none", "hubgw0 down", "hubgw0+hubgw1 down", "link ce:msee1 down"]
    for name, c in cols.items():
        assert c["note"] == "", (name, c["note"])  # applied, converged on BGP, restored
        assert c["audit"] is not None, name
    both = cols.pop("hubgw0+hubgw1 down")
    assert any(f["from"] in S1 and f["to"] in S1 and f["expected"] == "encrypted" and f["observed"] == "clear"
               for f in both["audit"]["flows"]), both["audit"]["flows"]
    assert both["leaks"]
    for name, c in cols.items():
        assert c["leaks"] == [], (name, c["leaks"])
        for f in c["audit"]["flows"]:
            if f["expected"] == "encrypted" and name != "link ce:msee1 down":
                # baseline, and one instance down: BFD moved S1 to the other instance, still ESP
                assert f["observed"] == "encrypted", (name, f)
            elif f["expected"] == "encrypted":
                assert f["observed"] != "clear", (name, f)
    # restored: every BGP session Established again, nothing left frozen, the plain audit passes
    after = _sessions(bgp_lab)
    assert after == before, after
    for p in LabState.open(bgp_lab).data["processes"]:
        state = open(f"/proc/{p['pid']}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state != "T", p
    res = cli("audit", bgp_lab)
    assert res.returncode == 0, res.stdout + res.stderr
