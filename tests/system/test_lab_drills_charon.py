"""`lab node LAB NODE restart` on a strongSwan node: charon is stopped by PID and started again from
the compiled plan (its connections go in over vici), and the tunnel to the ipsecemu gateway comes
back (time printed)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.root

LAB = """
name: {name}
nodes:
  left:
    kind: host
    addresses: {{eth0: 10.1.0.10/24}}
    routes: [{{dst: default, via: 10.1.0.1}}]
  gws:
    kind: strongswan
    addresses: {{lan: 10.1.0.1/24, wan: 192.0.2.1/30}}
  gwa:
    kind: ipsecemu
    addresses: {{wan: 192.0.2.2/30, lan: 10.2.0.1/24}}
  right:
    kind: host
    addresses: {{eth0: 10.2.0.10/24}}
    routes: [{{dst: default, via: 10.2.0.1}}]
links:
  - endpoints: [left:eth0, gws:lan]
  - endpoints: [gws:wan, gwa:wan]
    impair: {{}}
  - endpoints: [gwa:lan, right:eth0]
vpn:
  connections:
    - name: s-a
      nodes: [gws, gwa]
      addresses: [192.0.2.1, 192.0.2.2]
      routes: {{gws: [10.2.0.0/24], gwa: [10.1.0.0/24]}}
      config:
        psk: drills-lab-only-psk
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
        dpd: {{interval: 2, timeout: 10}}
"""


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "ipsecemu", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"ipsecemu {' '.join(args)}: rc {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"drillc-{uuid.uuid4().hex[:6]}"
    f = tmp_path_factory.mktemp("drillc") / "lab.yaml"
    f.write_text(LAB.format(name=name))
    cli("lab", "up", str(f), timeout=180)
    try:
        yield name
    finally:
        cli("lab", "down", name, check=False)


def ping_ok(lab: str) -> bool:
    out = subprocess.run(["ip", "netns", "exec", f"{lab}-left", "ping", "-n", "-c", "1", "-W", "1", "10.2.0.10"],
                         capture_output=True, text=True, timeout=10).stdout
    return "time=" in out


def test_charon_restart_rejoins(lab: str) -> None:
    assert ping_ok(lab)
    out = cli("lab", "node", lab, "gws", "restart", "--wait", "60", timeout=120).stdout
    print("\n" + out)
    assert "stopped 1 daemon(s)" in out and "started charon" in out
    assert re.search(r"node gws: tunnels re-established [0-9.]+ s after the start", out), out
    ok = False
    for _ in range(20):
        ok = ping_ok(lab)
        if ok:
            break
        time.sleep(0.5)
    assert ok
    # a lossy underlay during the restart: IKE retransmits through 20 % loss each way
    cli("lab", "impair", lab, "gws:wan", "--loss", "20%")
    out = cli("lab", "node", lab, "gws", "restart", "--wait", "90", timeout=150).stdout
    print(f"with 20 % loss each way:\n{out}")
    assert "tunnels re-established" in out
    cli("lab", "impair", lab, "gws:wan", "--clear")
