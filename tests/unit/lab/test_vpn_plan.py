"""The VPN lab service without root: generated gateway/charon configs, the route agent's plan,
the smoke plan and the pcap counter (cross-checked against scapy-written packets)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from ipsecemu.config import gateway as gwconfig
from ipsecemu.lab import route_agent, smoke, topology
from ipsecemu.lab.capture import pcap_flows
from ipsecemu.lab.plan import vpn as planvpn
from ipsecemu.lab.state import LabState

from support.paths import REPO  # noqa: E402

ER = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"  # static-route S1 (route agent)
ER_SS = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan-strongswan.yaml"  # static routes + agent


@pytest.fixture
def er() -> topology.Topology:
    return topology.load(ER)


def _state(tmp_path: Path, name: str) -> LabState:
    st = LabState(name, tmp_path)
    st.dir.mkdir(parents=True)
    return st


def test_er_vwan_vpn_section_is_azure_s1(er: topology.Topology) -> None:
    assert [(c.name, c.nodes, c.addresses) for c in er.vpn] == [
        ("ce-hubgw0", ("ce", "hubgw0"), ("172.24.127.211", "10.51.230.4")),
        ("ce-hubgw1", ("ce", "hubgw1"), ("172.24.127.211", "10.51.230.5"))]
    for c in er.vpn:
        pol = c.config["ipsec_policy"]
        assert pol["sa_lifetime_seconds"] == 3600 and pol["sa_datasize_kilobytes"] == 102400000
        assert c.routes_of(c.nodes[1]) == ("10.0.1.0/24",)  # the VPN carries only the VPN-connected net
        assert c.table_of("ce") == 100 and c.table_of(c.nodes[1]) == 254
    ce = er.node("ce")
    assert [(r.src, r.table) for r in ce.rules] == [("10.0.1.0/24", 100)]  # on-prem prefers VPN for 10.0.1/24 only
    # the IKE peers' own addresses are never inside what the peer routes into the tunnel
    for c in er.vpn:
        for i, node in enumerate(c.nodes):
            peer_ip = ipaddress.ip_address(c.addresses[1 - i])
            assert c.table_of(node) != 254 or not any(peer_ip in ipaddress.ip_network(p) for p in c.routes_of(node))


def test_gateway_config_is_valid_and_route_based(er: topology.Topology, tmp_path: Path) -> None:
    d = planvpn.gateway_config(er, "ce", tmp_path)
    cfg = gwconfig.loads(yaml.safe_dump(d), "ce.yaml")  # the gateway's own parser accepts it
    assert cfg.node == "ce" and cfg.encapsulation == "udp" and cfg.state_dir == tmp_path
    assert [(c.name, c.tunnel.name, c.tunnel.routes) for c in cfg.connections] == [
        ("ce-hubgw0", "vpn0", ()), ("ce-hubgw1", "vpn1", ())]
    for c in cfg.connections:
        assert c.conn.start_action == "initiate" and c.close_action == "restart"
        assert [str(t) for t in c.conn.local_ts] == [str(t) for t in c.conn.remote_ts]  # 0/0 both
        assert c.conn.child_lifetime.seconds == 3600 and c.conn.child_lifetime.kilobytes == 102400000
    hub0 = gwconfig.loads(yaml.safe_dump(planvpn.gateway_config(er, "hubgw0", tmp_path)), "h.yaml")
    (only,) = hub0.connections
    assert only.conn.start_action == "listen" and str(only.conn.local_address) == "10.51.230.4"


def test_charon_conn_uses_routes_as_selectors() -> None:
    ss = topology.load(ER_SS)
    conn = planvpn.charon_conn(ss, "ce", ss.vpn[1])
    (child,) = conn.children
    assert conn.local_addrs == ("172.24.127.211",) and conn.remote_addrs == ("10.51.230.5",)
    assert child.local_ts == ("10.0.1.0/24",) and child.remote_ts == ("10.51.230.0/24", "10.51.231.0/24")
    assert child.start_action == "start" and conn.encap
    assert "aes256gcm16" in child.esp_proposals[0] and "modp2048" in conn.proposals[0]
    assert "er-vwan-lab-only-psk" not in conn.swanctl_conf()  # rendered config hides the PSK


def test_route_plan_watches_hub_ecmp_and_tunnels(er: topology.Topology, tmp_path: Path) -> None:
    plan = planvpn.route_plan(er, _state(tmp_path, "er-vwan").dir)
    tun = {(t["node"], t["conn"]): (t["dev"], t["table"], t["prefixes"]) for t in plan["tunnels"]}
    assert tun[("ce", "ce-hubgw0")] == ("vpn0", 100, ["10.51.230.0/24", "10.51.231.0/24"])
    assert tun[("ce", "ce-hubgw1")] == ("vpn1", 100, ["10.51.230.0/24", "10.51.231.0/24"])
    assert tun[("hubgw1", "ce-hubgw1")] == ("vpn0", 254, ["10.0.1.0/24"])
    (up,) = plan["upstream"]  # only the hub's 10.0.1.0/24 depends on the VPN, not ER's 10.0.0.0/16
    assert (up["node"], up["dst"]) == ("hub", "10.0.1.0/24")
    assert [(h["via"], h["vpn_node"]) for h in up["hops"]] == [("10.51.230.4", "hubgw0"), ("10.51.230.5", "hubgw1")]
    assert {(c["node"], c["prefix"]) for c in plan["checks"]} == {("hub", "10.0.1.0/24")}


def test_agent_withdraws_dead_instances(er: topology.Topology, tmp_path: Path) -> None:
    st = _state(tmp_path, "er-vwan")
    (st.dir / planvpn.PLAN_FILE).write_text(__import__("json").dumps(planvpn.route_plan(er, st.dir)))
    agent = route_agent.Agent(st.dir)
    all_up = {f"{t['node']}/{t['conn']}": True for t in agent.plan["tunnels"]}
    want = agent.desired(all_up)
    assert want[("er-vwan-ce", 100, "10.51.231.0/24", None)] == (("dev", "vpn0"), ("dev", "vpn1"))
    assert [h[1] for h in want[("er-vwan-hub", 254, "10.0.1.0/24", None)]] == ["10.51.230.4", "10.51.230.5"]
    down0 = {**all_up, "hubgw0/ce-hubgw0": False, "ce/ce-hubgw0": False}
    want = agent.desired(down0)
    assert want[("er-vwan-ce", 100, "10.51.231.0/24", None)] == (("dev", "vpn1"),)
    assert [h[1] for h in want[("er-vwan-hub", 254, "10.0.1.0/24", None)]] == ["10.51.230.5"]
    assert want[("er-vwan-hubgw0", 254, "10.0.1.0/24", None)] == ()
    none = {k: False for k in all_up}
    assert agent.desired(none)[("er-vwan-hub", 254, "10.0.1.0/24", None)] == ()  # back to ER's /16


def test_next_steps_plan_picks_s1_hosts_and_ce_uplinks(er: topology.Topology) -> None:
    p = smoke.next_steps_plan(er)
    assert p is not None
    assert p["protected"] == ("onprem1", "10.0.1.10") and p["remote"] == ("spoke1", "10.51.231.4")
    assert p["initiator"] == "ce"
    assert sorted(p["links"]) == ["msee1", "msee2"]


def test_pcap_flows_matches_scapy_packets(tmp_path: Path) -> None:
    a, b = "172.24.127.211", "10.51.230.4"
    pkts = [Ether() / IP(src=a, dst=b) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x10\x01" + b"x" * 40)] * 3
    pkts += [Ether() / IP(src=a, dst=b) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x00\x00" + b"ike")]
    pkts += [Ether() / IP(src=a, dst=b) / UDP(sport=4500, dport=4500) / Raw(b"\xff")]
    pkts += [Ether() / IP(src="10.0.2.10", dst="10.51.231.4") / ICMP()] * 2
    pkts += [Ether() / IP(src=a, dst=b, proto=50) / Raw(b"\x00" * 24)]
    f = tmp_path / "x.pcap"
    wrpcap(str(f), pkts)
    assert pcap_flows(f) == {(a, b, "esp-in-udp"): 3, (a, b, "ike"): 1, (a, b, "natt-keepalive"): 1,
                             ("10.0.2.10", "10.51.231.4", "icmp"): 2, (a, b, "esp"): 1}
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a pcap at all, really not")
    with pytest.raises(ValueError, match="not a pcap"):
        pcap_flows(bad)


def test_vpn_table_field_errors_are_located(tmp_path: Path) -> None:
    text = ER.read_text().replace("table: {ce: 100}", "table: {spoke1: 100}", 1)
    with pytest.raises(topology.TopologyError, match=r"er-vwan.yaml:\d+: vpn.connections\[0\].table.spoke1: "
                                                     r"'spoke1' is not one of this connection's nodes"):
        topology.loads(text, "er-vwan.yaml")


def test_route_plan_compares_prefixes_of_one_family_only() -> None:
    # an IPv6 route beside IPv4 tunnel prefixes used to raise TypeError in route_plan
    from ipsecemu.lab.plan.vpn import _within

    assert _within("10.1.2.0/24", "10.1.0.0/16")
    assert not _within("fd00:1::/64", "10.1.0.0/16")
    assert not _within("10.1.0.0/16", "::/0")
    assert _within("fd00:1::/64", "fd00::/16")
