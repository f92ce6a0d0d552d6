"""NAT keepalives (RFC 3948 section 2.3) between two ``ipsecemu gateway run`` daemons with
UDP-encapsulated idle tunnels: a capture on the middle veth sees 1-byte 0xFF datagrams to UDP
4500 from the side with ``nat_t: {keepalive: 1}`` only, the peer counts them
(transport ``keepalive_in`` / C loop ``keepalive``), and none are sent while ESP flows.  Needs root."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap

from ipsecemu.lab.netns import capture

from support.gateway_lab import Lab, start_ping, up

pytestmark = pytest.mark.root


def transport(lab_gw, addr: str) -> dict:
    return lab_gw.counters()["ike"][addr]["transport"]


def keepalives_in(lab_gw, addr: str) -> int:
    """Keepalives the peer received: on the transport's NAT-T socket, or -- once a C loop owns
    the connection's connected NAT-T socket -- in that loop's ``keepalive`` stat."""
    c = lab_gw.counters()
    return c["ike"][addr]["transport"].get("keepalive_in", 0) + \
        sum(conn["loop"].get("keepalive", 0) for conn in c["connections"].values())


def test_keepalives_on_idle_tunnel_only_where_enabled(lab_factory, tmp_path: Path) -> None:
    lab: Lab = lab_factory(encap="udp", extra_a="    nat_t: {keepalive: 1}\n",
                           extra_b="    nat_t: {keepalive: 0}\n")
    up(lab)
    pcap = tmp_path / "mid.pcap"
    with capture(lab.a.ns, lab.mid, pcap, "udp port 4500"):
        time.sleep(3.3)
    kas = [(p[IP].src, p[IP].dst, p[UDP].sport, p[UDP].dport) for p in rdpcap(str(pcap))
           if UDP in p and bytes(p[UDP].payload) == b"\xff"]
    # idle, 1 s interval: about 3 from a in 3.3 s; none from b (keepalive 0)
    assert 2 <= len(kas) <= 5, kas
    assert set(kas) == {("192.0.2.1", "192.0.2.2", 4500, 4500)}, kas
    assert keepalives_in(lab.b, "192.0.2.2") >= len(kas)
    assert keepalives_in(lab.a, "192.0.2.1") == 0
    sent = transport(lab.a, "192.0.2.1")["keepalive_out"]
    assert sent >= len(kas)

    # while ESP flows to the peer (a ping every 0.2 s) no keepalive is needed
    proc = start_ping(lab.left, "10.2.0.2", count=13, interval=0.2)
    try:
        time.sleep(1.2)  # the last keepalive's interval is over before we look
        before = transport(lab.a, "192.0.2.1")["keepalive_out"]
        time.sleep(1.3)
        assert transport(lab.a, "192.0.2.1")["keepalive_out"] == before
    finally:
        proc.wait(20)
