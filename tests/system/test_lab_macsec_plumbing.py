"""A `macsec:` link builds a tap (the node's L3 side) over a veth named <iface>_phy."""

from __future__ import annotations

import subprocess

import pytest

from ipsecemu.lab.builder import build, teardown
from ipsecemu.lab.topology import loads, phy_ifname

pytestmark = pytest.mark.root


def _links(ns: str) -> dict[str, str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0]: line for line in out.splitlines()}


def test_macsec_link_has_tap_and_phy(unique_name: str) -> None:
    topo = loads(f"""
name: {unique_name}
nodes:
  a: {{kind: router, addresses: {{l: [10.9.0.1/30]}}}}
  b: {{kind: router, addresses: {{l: [10.9.0.2/30]}}}}
links:
  - endpoints: ["a:l", "b:l"]
    mtu: 1500
    macsec: {{cipher: gcm-aes-128}}
""", file="t.yaml")
    assert topo.links[0].macsec == {"cipher": "gcm-aes-128"}
    try:
        build(topo)
        for node in ("a", "b"):
            links = _links(topo.netns(node))
            assert "l" in links and phy_ifname("l") in links
            assert "mtu 1500" in links["l"] and "mtu 1540" in links[phy_ifname("l")]
            addr = subprocess.run(["ip", "-n", topo.netns(node), "-br", "addr", "show", "l"],
                                  capture_output=True, text=True, check=True).stdout
            assert "10.9.0." in addr  # addresses go on the tap, not the veth
        # the tap was created inside the netns, not in ours
        assert "l_phy" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    finally:
        teardown(topo.name)
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(unique_name) == 0
