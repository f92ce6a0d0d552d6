"""`lab node LAB NODE restart` on a strongSwan node: charon is stopped by PID and started again from
the compiled plan (its connections go in over vici), and the tunnel to the ipsecemu gateway comes
back (time printed)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from support.labs import cli, lab_up, ping_within, pings, unique

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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = unique("drillc")
    with lab_up(tmp_path_factory.mktemp("drillc"), LAB.format(name=name), name) as up:
        yield up


def test_charon_restart_rejoins(lab: str) -> None:
    assert pings(lab, "left", "10.2.0.10", 1) == 1
    out = cli("lab", "node", lab, "gws", "restart", "--wait", "60", timeout=120).stdout
    print("\n" + out)
    assert "stopped 1 daemon(s)" in out and "started charon" in out
    assert re.search(r"node gws: tunnels re-established [0-9.]+ s after the start", out), out
    assert ping_within(lab, "left", "10.2.0.10")
    # a lossy underlay during the restart: IKE retransmits through 20 % loss each way
    cli("lab", "impair", lab, "gws:wan", "--loss", "20%")
    out = cli("lab", "node", lab, "gws", "restart", "--wait", "90", timeout=150).stdout
    print(f"with 20 % loss each way:\n{out}")
    assert "tunnels re-established" in out
    cli("lab", "impair", lab, "gws:wan", "--clear")
