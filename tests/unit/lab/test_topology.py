"""Topology YAML -> frozen dataclasses; every user mistake is one located error."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from ipsecemu.config.connection import parse_connection
from ipsecemu.lab import topology
from ipsecemu.lab.topology import TopologyError

from support.paths import REPO  # noqa: E402

ER = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"  # static-route S1 (route agent)
PAIR = REPO / "netns-labs" / "pair.yaml"


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    lines = [i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln]
    return lines[nth]


def test_er_vwan_matches_scenario() -> None:
    t = topology.load(ER)
    assert t.name == "er-vwan"
    assert {n.name for n in t.nodes} == {"onprem1", "onprem2", "ce", "msee1", "msee2", "hub", "hubgw0", "hubgw1",
                                         "spoke1"}
    assert t.node("onprem1").addresses == (("eth0", "10.0.1.10/24"),)
    assert t.node("onprem2").addresses == (("eth0", "10.0.2.10/24"),)
    assert ("lo", "172.24.127.211/32") in t.node("ce").addresses
    assert t.node("hubgw0").addresses == (("eth0", "10.51.230.4/24"),)
    assert t.node("hubgw1").addresses == (("eth0", "10.51.230.5/24"),)
    assert t.node("spoke1").addresses == (("eth0", "10.51.231.4/24"),)
    assert t.node("hub").addresses_on("hubnet") == ["10.51.230.1/24"]
    # ECMP towards Azure on the CE and towards on-prem on the hub, one next hop per MSEE
    ce_ecmp = {r.dst: {h.via for h in r.nexthops} for r in t.node("ce").routes if r.multipath}
    assert ce_ecmp["10.51.231.0/24"] == {"192.168.100.2", "192.168.100.6"}
    hub_ecmp = {r.dst: {h.via for h in r.nexthops} for r in t.node("hub").routes if r.multipath}
    assert hub_ecmp["10.0.0.0/16"] == {"192.168.101.1", "192.168.101.5"}
    # the VPN device address is advertised to Azure over ER (S1 requirement)
    assert "172.24.127.211/32" in hub_ecmp
    # the VPN section is kept, its IKE/ESP content opaque
    assert [c.name for c in t.vpn] == ["ce-hubgw0", "ce-hubgw1"]
    assert t.vpn[0].nodes == ("ce", "hubgw0")
    assert t.vpn[0].addresses == ("172.24.127.211", "10.51.230.4")
    assert t.vpn[1].addresses == ("172.24.127.211", "10.51.230.5")
    assert t.vpn[0].routes_of("hubgw0") == ("10.0.1.0/24",)  # S1: the more specific prefix over VPN
    assert t.vpn[0].config["ipsec_policy"]["ipsec_encryption"] == "GCMAES256"
    seg = t.segments[0]
    assert [str(m) for m in seg.members] == ["hub:hubnet", "hubgw0:eth0", "hubgw1:eth0"]


def test_all_addresses_unique_and_links_short() -> None:
    for f in (ER, PAIR):
        t = topology.load(f)
        ips = [str(ipaddress.ip_interface(a).ip) for n in t.nodes for _, a in n.addresses]
        assert len(ips) == len(set(ips))
        for lk in t.links:
            assert len(lk.a.iface) <= 15 and len(lk.b.iface) <= 15


def test_pair_lab() -> None:
    t = topology.load(PAIR)
    assert [n.kind for n in t.nodes].count("ipsecemu") == 2
    assert [n.kind for n in t.nodes].count("host") == 2
    assert t.vpn[0].nodes == ("gwa", "gwb")


def test_frozen_and_renamed() -> None:
    t = topology.load(ER, name="t123456")
    assert t.name == "t123456" and t.netns("ce") == "t123456-ce"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.vpn[0].config["psk"] = "x"  # type: ignore[index]
    with pytest.raises(TopologyError, match="invalid lab name"):
        t.renamed("Bad Name")


def test_unknown_node_names_file_line_field(tmp_path: Path) -> None:
    text = ER.read_text().replace('["ce:msee2", "msee2:ce"]', '["ce:msee2", "msee3:ce"]')
    f = tmp_path / "er-vwan.yaml"
    f.write_text(text)
    with pytest.raises(TopologyError) as ei:
        topology.load(f)
    line = _line_of(text, '"msee3:ce"')
    assert str(ei.value) == f"{f}:{line}: links[3].endpoints[1]: unknown node 'msee3'"
    assert ei.value.line == line and ei.value.field == "links[3].endpoints[1]"


MUTATIONS = [
    # (description, old, new, needle for the line, expected field, message fragment)
    ("duplicate address", "addresses: {eth0: [10.51.230.5/24]}", "addresses: {eth0: [10.51.230.4/24]}",
     "10.51.230.4/24]}", "nodes.hubgw1.addresses.eth0[0]", "duplicate address 10.51.230.4"),
    ("bad CIDR", "[10.0.2.10/24]", "[10.0.2.300/24]", "10.0.2.300", "nodes.onprem2.addresses.eth0[0]",
     "bad CIDR"),
    ("CIDR without prefix", "[10.0.2.10/24]", "[10.0.2.10]", "[10.0.2.10]", "nodes.onprem2.addresses.eth0[0]",
     "bad CIDR"),
    ("unknown kind", "kind: router\n    addresses:\n      msee1:", "kind: switch\n    addresses:\n      msee1:",
     "kind: switch", "nodes.hub.kind", "unknown kind 'switch'"),
    ("unknown field", "    kind: host\n    addresses: {eth0: [10.0.1.10/24]}",
     "    kind: host\n    adresses: {eth0: [10.0.1.10/24]}", "adresses:", "nodes.onprem1.adresses", "unknown field"),
    ("interface name too long", '"hub:spoke1", "spoke1:eth0"', '"hub:spoke1", "spoke1:averyveryverylongname"',
     "averyveryverylongname", "links[6].endpoints[1]", "bad interface name"),
    ("address on undeclared iface", "      lan2: [10.0.2.1/24]", "      lan3: [10.0.2.1/24]", "lan3:",
     "nodes.ce.addresses.lan3", "has no interface 'lan3'"),
    ("route dst host bits", "dst: 10.0.0.0/16, via: 192.168.100.1", "dst: 10.0.0.1/16, via: 192.168.100.1",
     "10.0.0.1/16", "nodes.msee1.routes[0].dst", "host bits"),
    ("bad gateway", "via: 10.51.231.1}", "via: 10.51.231.x}", "10.51.231.x", "nodes.spoke1.routes[0].via",
     "bad IP address"),
    ("vpn to a router", "nodes: [ce, hubgw1]", "nodes: [ce, msee1]", "[ce, msee1]",
     "vpn.connections[1].nodes[1]", "kind 'router'"),
    ("vpn address not on the node", "addresses: [172.24.127.211, 10.51.230.5]",
     "addresses: [172.24.127.211, 10.51.230.9]", "10.51.230.9]", "vpn.connections[1].addresses[1]",
     "not an address of node 'hubgw1'"),
    ("vpn routes for a third node", "        hubgw1: [10.0.1.0/24]", "        hub: [10.0.1.0/24]",
     "        hub: [10.0.1.0/24]", "vpn.connections[1].routes.hub", "not one of this connection's nodes"),
    ("interface used twice", '["msee2:hub", "hub:msee2"]', '["msee2:hub", "hub:msee1"]', '"hub:msee1"]',
     "links[5].endpoints[1]", "already used"),
    ("duplicate key", "  onprem2:\n    kind: host", "  onprem1:\n    kind: host", "onprem1:", "nodes.onprem1",
     "duplicate key"),
]


@pytest.mark.parametrize("desc,old,new,needle,field,msg", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mistakes_are_located(tmp_path: Path, desc: str, old: str, new: str, needle: str, field: str,
                              msg: str) -> None:
    base = ER.read_text()
    assert old in base, desc
    text = base.replace(old, new, 1)
    f = tmp_path / "lab.yaml"
    f.write_text(text)
    with pytest.raises(TopologyError) as ei:
        topology.load(f)
    err = ei.value
    assert err.field == field, str(err)
    assert msg in err.message, str(err)
    nth = 1 if desc in ("duplicate key", "duplicate address", "interface used twice") else 0
    assert err.line == _line_of(text, needle, nth), str(err)
    assert str(err).startswith(f"{f}:{err.line}: {field}: ")
    assert "\n" not in str(err)


@pytest.mark.parametrize("text,line,fragment", [
    ("name: x1\nnodes:\n  a: {kind: host\n", 4, "YAML syntax error"),
    ("name: x1\nnodes:\n  a:\n    kind: host\n   bad: 1\n", 5, "YAML syntax error"),
    ("name: x1\nnodes: [\n", 3, "YAML syntax error"),
    ("", 1, "empty file"),
    ("name: x1\nnodes:\n  a: !!python/object:os.system {kind: host}\n", 3, "unsupported YAML tag"),
    ("name: x1\nnodes:\n  a: {kind: host}\x00\n", 3, "not allowed in YAML"),
    ("- just\n- a list\n", 1, "must be a mapping"),
    ("name: Bad_Name\nnodes: {a: {kind: host}}\n", 1, "invalid lab name"),
    ("name: ok\nnodes: {a-b: {kind: host}}\n", 2, "invalid node name"),
    ("name: ok\nnodes: {}\n", 2, "at least one node"),
    ("name: ok\nnodes: {a: {kind: host}}\nlinks:\n  - endpoints: [a:x]\n", 4, "exactly two endpoints"),
])
def test_syntax_and_structure_errors(text: str, line: int | None, fragment: str) -> None:
    with pytest.raises(TopologyError) as ei:
        topology.loads(text, "f.yaml")
    assert ei.value.line == line
    assert fragment in str(ei.value)
    assert str(ei.value).startswith("f.yaml")


def test_multipath_rules_sysctls_and_segments() -> None:
    text = """
name: mini
nodes:
  r:
    kind: router
    addresses: {a: [10.0.0.1/24], b: [10.0.1.1/24]}
    routes:
      - dst: 10.9.0.0/16
        nexthops: [{via: 10.0.0.2, weight: 3}, {via: 10.0.1.2, dev: b}]
        table: 100
      - {dst: default, dev: a, metric: 50}
    rules:
      - {from: 10.0.0.0/24, table: 100, priority: 1000}
      - {to: 10.9.0.0/16, iif: b, table: main}
    sysctls: {net.ipv4.conf.all.rp_filter: 0, net.ipv4.ip_forward: true}
  x: {kind: host, addresses: {e: [10.0.0.2/24]}}
  y: {kind: host, addresses: {e: [10.0.1.2/24]}}
  z: {kind: host, addresses: {e: [10.0.1.3/24]}}
links:
  - endpoints: [r:a, x:e]
segments:
  - name: lan
    members: [r:b, y:e, z:e]
"""
    t = topology.loads(text)
    r = t.node("r")
    assert r.routes[0].multipath and r.routes[0].table == 100
    assert r.routes[0].nexthops[0].weight == 3 and r.routes[0].nexthops[1].dev == "b"
    assert r.routes[1].dst == "default" and r.routes[1].metric == 50
    assert r.rules[0].src == "10.0.0.0/24" and r.rules[0].priority == 1000
    assert r.rules[1].table == 254 and r.rules[1].iif == "b"
    assert dict(r.sysctls) == {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.ip_forward": "1"}
    assert t.segments[0].name == "lan" and len(t.segments[0].members) == 3
    assert t.segment_netns("lan") == "mini--lan"


@pytest.mark.parametrize("path", [ER, PAIR], ids=["er-vwan", "pair"])
def test_vpn_sections_parse_with_the_ike_config_parser(path: Path) -> None:
    """The opaque part is for ipsecemu.config.connection: both sides of every connection must load there."""

    t = topology.load(path)
    assert t.vpn
    for c in t.vpn:
        a, b = (parse_connection(c.side_config(n)) for n in c.nodes)
        assert str(a.local_address) == str(b.remote_address) == c.addresses[0]
        assert str(b.local_address) == str(a.remote_address) == c.addresses[1]
        assert (a.start_action, b.start_action) == ("initiate", "listen")
        assert a.esp_proposals == b.esp_proposals and a.auth.secret == b.auth.secret
