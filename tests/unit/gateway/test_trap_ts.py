"""An on-demand Child SA's traffic selectors (RFC 7296 section 2.9): the triggering packet's
5-tuple first in TSi/TSr, then the configured ones; the responder narrows and keeps the packet's.
Two real IKE endpoints over the in-memory network, configs from gateway YAML (transport mode,
TCP 8080 selectors as in the issue-12 host policy)."""

from __future__ import annotations

import ipaddress

from ipsecemu.config.connection import parse_ts
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.config.gateway import loads
from ipsecemu.gateway.trap import initiate_with
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.events import ChildSaEstablished
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.ts import TrafficSelector, on_demand

H1, VM1 = "10.2.27.4", "10.0.1.4"


def gw(me: str, peer: str, local: str, remote: str, start: str) -> IkeEndpoint:
    text = f"""\
node: n-{me}
connections:
  c:
    local_address: {me}
    remote_address: {peer}
    psk: s5-secret
    mode: transport
    esp_proposals: 3des-sha1
    local_ts: ["{local}"]
    remote_ts: ["{remote}"]
    start_action: {start}
    tunnel: {{name: t0, table: 108}}
"""
    (c,) = loads(text).connections
    return IkeEndpoint([to_ike_sa_config(c.conn)], (me, 500))


def ip(a: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(a)


def test_on_demand_puts_the_packet_first() -> None:
    local, remote = [parse_ts("10.2.27.0/25[tcp]")], [parse_ts("10.0.1.0/24[tcp/8080]")]
    tsi, tsr = on_demand(local, remote, ip(H1), ip(VM1), 6, 40001, 8080)
    assert tsi == [TrafficSelector(ip(H1), ip(H1), 6, 40001, 40001), *local]
    assert tsr == [TrafficSelector(ip(VM1), ip(VM1), 6, 8080, 8080), *remote]
    # no ports (a later fragment): the whole port range; a selector equal to the packet's is not repeated
    exact = [TrafficSelector(ip(H1), ip(H1), 17)]
    tsi, _ = on_demand(exact, remote, ip(H1), ip(VM1), 17, None, None)
    assert tsi == exact


def test_triggered_child_sa_keeps_the_packets_selectors_on_both_sides() -> None:
    host1 = gw(H1, VM1, "10.2.27.0/25[tcp]", "10.0.1.0/24[tcp/8080]", "trap")
    # the responder allows less than the initiator's configuration (only vm1 itself), but the
    # packet's selectors: RFC 7296 2.9 says it must keep those when it narrows
    vm1 = gw(VM1, H1, "10.0.1.4/32[tcp/8080]", "10.2.27.0/25[tcp]", "listen")
    cfg = host1.configs["c"]
    tsi, tsr = on_demand(cfg.local_ts, cfg.remote_ts, ip(H1), ip(VM1), 6, 40001, 8080)
    net = LoopbackNet([host1, vm1])
    initiate_with(host1, "c", tsi, tsr, net.now)
    assert host1.configs["c"] is cfg  # the connection's own settings are unchanged
    net.run()
    got = {}
    for name, ep in (("host1", host1), ("vm1", vm1)):
        while (ev := ep.next_event()) is not None:
            if isinstance(ev, ChildSaEstablished):
                got[name] = ev.keys
    k1, k2 = got["host1"], got["vm1"]
    pkt_i = TrafficSelector(ip(H1), ip(H1), 6, 40001, 40001)
    pkt_r = TrafficSelector(ip(VM1), ip(VM1), 6, 8080, 8080)
    assert k1.mode == k2.mode == "transport"
    assert k1.local_ts[0] == pkt_i and k1.remote_ts[0] == pkt_r  # the packet's selectors first
    assert k2.remote_ts[0] == pkt_i and k2.local_ts[0] == pkt_r
    # narrowed to what the responder allows: vm1 itself, TCP 8080
    assert all(t.start_addr == t.end_addr == ip(VM1) and (t.start_port, t.end_port) == (8080, 8080)
               for t in k1.remote_ts)
    assert set(k1.local_ts) == set(k2.remote_ts) and set(k1.remote_ts) == set(k2.local_ts)
