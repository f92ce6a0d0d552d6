"""One ipsecemu gateway (gwa, one WAN address) is the RESPONDER for two connections, one per
initiator gateway (gwb, gwc); both tunnels come up and pass traffic, and what crosses the WAN
between gwa and the router is ESP only (from a capture).  Regression for: only the first of
the two came up - IKE_AUTH re-selected the connection by identity alone, and lab connections
accept any identity, so gwc was handed gwa's connection to gwb.  Variant: gwc is charon.

  left ── gwa ══wan══ r ══ gwb ── right1
                        ╚══ gwc ── right2      (gwb, gwc initiate; gwa only listens)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.lab.capture import pcap_flows
from ipsecemu.strongswan.charon import charon_available

from support.labs import capture, cli, lab_up, pings, star_lab, unique

pytestmark = pytest.mark.root

VPN = """\
vpn:
  connections:
    - name: gwb-gwa
      nodes: [gwb, gwa]
      addresses: [192.0.2.6, 192.0.2.1]
      routes: {gwb: [10.1.0.0/24], gwa: [10.2.0.0/24]}
      config:
        psk: resp-lab-only-psk-b
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
    - name: gwc-gwa
      nodes: [gwc, gwa]
      addresses: [192.0.2.10, 192.0.2.1]
      routes: {gwc: [10.1.0.0/24], gwa: [10.3.0.0/24]}
      config:
        psk: resp-lab-only-psk-c
        ike_proposals: aes128gcm16-prfsha256-ecp256
        esp_proposals: aes128gcm16
"""


@pytest.fixture(params=["ipsecemu", "strongswan"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    if kind == "strongswan" and charon_available() is not None:
        pytest.skip(str(charon_available()))
    name = unique(f"resp-{kind[:2]}", 5)
    with lab_up(tmp_path, star_lab(name, VPN, gwc_kind=kind), name) as up:
        yield up


def test_one_responder_serves_two_initiators(lab: str, tmp_path: Path) -> None:
    (lb,) = json.loads(cli("lab", "status", lab, "--json").stdout)["labs"]
    gwa = sorted((t["conn"], t["state"]) for t in lb["vpn"]["tunnels"] if t["node"] == "gwa")
    print("\ngwa tunnels:", gwa)
    assert gwa == [("gwb-gwa", "ESTABLISHED"), ("gwc-gwa", "ESTABLISHED")]
    pcap = tmp_path / "wan.pcap"
    with capture(lab, "gwa:wan", pcap, 4):
        got = {src: pings(lab, src, "10.1.0.10", 4) for src in ("right1", "right2")}
        got["left->right2"] = pings(lab, "left", "10.3.0.10", 4)
    print("echo replies:", got)
    assert got == {"right1": 4, "right2": 4, "left->right2": 4}
    flows = pcap_flows(pcap)
    clear = {k: v for k, v in flows.items() if k[0].startswith("10.") or k[1].startswith("10.")}
    esp = {peer: sum(v for (s, d, kind), v in flows.items() if kind.startswith("esp") and peer in (s, d))
           for peer in ("192.0.2.6", "192.0.2.10")}
    print("ESP packets on gwa:wan per peer:", esp)
    assert clear == {}, f"inner traffic in clear on the WAN: {clear}"
    assert esp["192.0.2.6"] >= 8 and esp["192.0.2.10"] >= 16
