"""Host IPsec policy (issue 12, S5): the ``ipsec_policy`` schema, its located errors, and what the plan
makes of it -- the steering rules, the prohibit routes and each host's gateway config (hostgw's
contract: start_action trap, trap_fallback, tunnel.table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecemu.config import gateway as gwconfig
from ipsecemu.lab import check, hostpolicy_plan
from ipsecemu.lab.plan import compile_plan, plan_text
from ipsecemu.lab.topology import TopologyError

from support.paths import REPO  # noqa: E402

LAB = REPO / "netns-labs" / "er-transport-8080.yaml"
BASE = Path("/run/ipsecemu")


def _steer_text(topo: object, node: str) -> list[str]:
    rules, routes = hostpolicy_plan.steering(topo, topo.node(node))  # type: ignore[attr-defined]
    return [r.text() for r in sorted(rules, key=lambda r: r.priority)] + [r.text() for r in routes]


def test_shipped_lab_steers_only_tcp_8080_both_ways() -> None:
    topo = check.check_file(LAB)
    assert [n.name for n in hostpolicy_plan.policy_hosts(topo)] == ["host1", "vm1", "vm2"]
    assert _steer_text(topo, "host1") == [
        # cleartext 8080 from Azure is refused on arrival (require), before the local rule delivers it
        "priority 100 from 10.0.1.0/24 to 10.2.27.0/25 iif eth0 ipproto tcp sport 8080 prohibit",
        "priority 101 from 10.0.1.0/24 to 10.2.27.0/25 iif eth0 ipproto tcp dport 8080 prohibit",
        # out: requests to 8080 and answers from 8080 (mirrored) go to the rule's table
        "priority 2000 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp dport 8080 lookup 200",
        "priority 2001 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp sport 8080 lookup 200",
        "prohibit 10.0.1.0/24 table 200 metric 4000000000",
    ]
    assert hostpolicy_plan.steering(topo, topo.node("host2")) == ([], [])  # no policy: nothing touched
    assert hostpolicy_plan.IN_BASE < hostpolicy_plan.LOCAL_PREF < hostpolicy_plan.OUT_BASE


def test_shipped_lab_connections_one_per_peer_and_rule() -> None:
    topo = check.check_file(LAB)
    got = {(c.name, c.peer, c.table, c.tun) for c in hostpolicy_plan.connections(topo, topo.node("vm1"))}
    assert got == {("onprem8080-host1", "host1", 200, "ips0"), ("vnet8080-vm2", "vm2", 201, "ips1")}
    # host2 has no policy: never a peer, so its 8080 hits the prohibit (require) or main (request)
    assert all(c.peer != "host2" for n in ("host1", "vm1", "vm2") for c in hostpolicy_plan.connections(topo, topo.node(n)))


def test_gateway_config_is_hostgw_contract_and_parses() -> None:
    topo = check.check_file(LAB)
    raw = hostpolicy_plan.gateway_config(topo, topo.node("host1"), Path("/x"))
    c = raw["connections"]["onprem8080-vm1"]
    assert c["start_action"] == "trap" and c["trap_fallback"] == "drop" and "trap_timeout" not in c
    assert c["mode"] == "transport" and c["esp_proposals"] == "3des-sha1,aes128gcm16"
    assert c["tunnel"] == {"name": "ips0", "table": 200, "routes": ["10.0.1.4/32"], "mtu": 1400}
    assert set(c["local_ts"]) == {"10.2.27.10/32[tcp]", "10.2.27.10/32[tcp/8080]"}
    assert set(c["remote_ts"]) == {"10.0.1.4/32[tcp]", "10.0.1.4/32[tcp/8080]"}
    cfg = gwconfig.parse(raw, source="t")
    conn = cfg.connection("onprem8080-vm1")
    assert conn is not None and conn.conn.mode == "transport"
    assert [p.to_strongswan_string() for p in conn.conn.esp_proposals][0].startswith("3des")


def _variant(action: str, **extra: object) -> str:
    text = LAB.read_text().replace("action: require", f"action: {action}")
    for k, v in extra.items():
        text = text.replace("          mode: transport\n", f"          mode: transport\n          {k}: {v}\n", 1)
    return text


def test_request_falls_back_to_clear_and_refuses_nothing() -> None:
    topo = check.check_text(_variant("request", negotiation_timeout=3), "v.yaml")
    assert _steer_text(topo, "host1") == [
        "priority 2000 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp dport 8080 lookup 200",
        "priority 2001 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp sport 8080 lookup 200"]
    c = hostpolicy_plan.gateway_config(topo, topo.node("host1"), Path("/x"))["connections"]["onprem8080-vm1"]
    assert (c["trap_fallback"], c["trap_timeout"]) == ("clear", 3)


def test_block_and_permit_first_match_wins() -> None:
    text = LAB.read_text().replace("""      rules:
        - name: onprem8080""", """      rules:
        - name: ping
          filter: {src: 10.2.27.0/25, dst: 10.0.1.0/24, protocol: icmp}
          action: permit
        - name: noudp
          filter: {src: 10.2.27.0/25, dst: 10.0.1.0/24, protocol: udp, mirrored: false}
          action: block
        - name: onprem8080""")
    topo = check.check_text(text, "v.yaml")
    lines = _steer_text(topo, "host1")
    assert "priority 100 from 10.0.1.0/24 to 10.2.27.0/25 iif eth0 ipproto icmp lookup local" in lines
    assert "priority 2000 from 10.2.27.0/25 to 10.0.1.0/24 ipproto icmp lookup main" in lines
    assert "priority 2010 from 10.2.27.0/25 to 10.0.1.0/24 ipproto udp prohibit" in lines
    # udp is filtered: IKE and ESP are exempted before any rule, both ways
    assert "priority 1995 ipproto udp dport 500 lookup main" in lines
    assert "priority 99 iif eth0 ipproto esp lookup local" in lines
    tcp = [x for x in lines if "8080" in x]
    assert tcp[0].startswith("priority 120 ")  # the third rule's priorities come after the first two's


def test_dry_run_shows_steering_without_the_psk() -> None:
    text = plan_text(compile_plan(check.check_file(LAB), BASE))
    assert "steer: rule priority 2000 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp dport 8080 lookup 200" in text
    assert "ipsec: onprem8080-vm1: 10.2.27.10 <-> 10.0.1.4 (vm1) transport" in text
    assert "s5-lab-only-psk" not in text
    plan = compile_plan(check.check_file(LAB), BASE)
    gw = plan.file("host1/host-ipsec.yaml")
    assert gw.secret and "s5-lab-only-psk" in gw.text


def test_psk_file_relative_to_the_lab_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "s5.psk").write_text("from-a-file\n")
    lab = tmp_path / "lab.yaml"
    lab.write_text(LAB.read_text().replace("psk: s5-lab-only-psk", "psk_file: keys/s5.psk"))
    topo = check.check_file(lab)
    pol = topo.node("vm1").ipsec_policy
    assert pol is not None and pol.ike is not None and pol.ike.psk == "from-a-file"
    assert "from-a-file" not in repr(pol)


def _last_line(text: str, needle: str) -> int:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln][-1]


@pytest.mark.parametrize(("old", "new", "field", "msg"), [
    ("action: require", "action: negotiate", "rules[0].action", "must be one of require, request, permit, block"),
    ("methods: [3des-sha1, aes128gcm16]", "methods: [3des-md9]", "rules[0].methods[0]", ""),
    ("dst: 10.0.1.0/24, protocol: tcp, dst_port: 8080", "dst: 10.0.1.0/24, protocol: icmp, dst_port: 8080",
     "rules[0].filter.dst_port", "ports need protocol tcp or udp"),
    ("src: 10.2.27.0/25", "src: 10.2.27.1/25", "rules[0].filter.src", "no host bits"),
    ("mode: transport\n        - name: vnet8080", "mode: beet\n        - name: vnet8080", "rules[0].mode",
     "transport or tunnel"),
    ("name: vnet8080", "name: onprem8080", "rules[1].name", "duplicate rule name"),
    ("auth: psk, psk: s5-lab-only-psk,", "auth: kerberos,", "ike.auth", "out of scope"),
])
def test_policy_mistakes_are_located(old: str, new: str, field: str, msg: str) -> None:
    text = LAB.read_text()
    assert old in text
    bad = text.replace(old, new, 1)
    with pytest.raises(TopologyError) as ei:
        check.check_text(bad, "lab.yaml")
    e = ei.value
    assert e.field == f"nodes.host1.ipsec_policy.{field}", str(e)
    assert msg in e.message
    assert e.line == _last_line(bad, new.splitlines()[0].strip())


def test_policy_on_a_router_and_missing_ike_are_refused() -> None:
    text = LAB.read_text()
    bad = text.replace("  ce:\n    kind: router\n", "  ce:\n    kind: router\n    http: [80]\n")
    with pytest.raises(TopologyError, match=r"lab.yaml:\d+: nodes.ce.http: only host nodes have 'http'"):
        check.check_text(bad, "lab.yaml")
    bad = text.replace("    ike: {auth: psk, psk: s5-lab-only-psk, proposals: aes256-sha256-modp2048}   "
                       "# a throw-away lab secret\n", "")
    with pytest.raises(TopologyError, match=r"rule 'onprem8080' negotiates \(require\): give 'ike'"):
        check.check_text(bad, "lab.yaml")


def test_a_peer_without_a_rule_back_is_refused() -> None:
    text = LAB.read_text()
    # vm2 gets its own policy without the on-prem rule: host1 would negotiate with it and fail
    own = ("    ipsec_policy:\n      ike: {auth: psk, psk: s5-lab-only-psk}\n      rules:\n        - name: vnet8080\n"
           "          filter: {src: 10.0.1.0/24, dst: 10.0.1.0/24, protocol: tcp, dst_port: 8080}\n"
           "          action: require\n          methods: [aes128gcm16]\n")
    idx = text.rindex("    ipsec_policy: *s5\n")
    bad = text[:idx] + own + text[idx + len("    ipsec_policy: *s5\n"):]
    with pytest.raises(TopologyError, match=r"negotiates with 'vm2' \(10.0.1.5\), whose ipsec_policy has no transport "
                                            r"rule back"):
        check.check_text(bad, "lab.yaml")
    with pytest.raises(TopologyError, match="different PSKs") as ei:
        check.check_text(_same_rules_other_psk(text), "lab.yaml")
    assert "another" not in str(ei.value)


def _same_rules_other_psk(text: str) -> str:
    """vm2 with the same rules as the others but its own PSK."""
    start = text.index("    ipsec_policy: &s5\n")
    end = text.index("  host2:\n", start)
    block = text[start:end].replace("ipsec_policy: &s5", "ipsec_policy:").replace("s5-lab-only-psk", "another")
    idx = text.rindex("    ipsec_policy: *s5\n")
    return text[:idx] + block + text[idx + len("    ipsec_policy: *s5\n"):]


def test_http_servers_are_daemons_of_their_host() -> None:
    text = LAB.read_text().replace("  host2:\n    kind: host\n", "  host2:\n    kind: host\n    http: [80, 8080]\n")
    plan = compile_plan(check.check_text(text, "v.yaml"), BASE)
    http = [d for d in plan.daemons_of(hostpolicy_plan.HTTP)]
    assert [(d.node, d.info["port"]) for d in http] == [("host2", 80), ("host2", 8080)]
    assert http[0].argv[-5:] == ("80", "--bind", "0.0.0.0", "--directory", "/run/ipsecemu/er-transport-8080/host2/www")
    assert [f.path for d in http for f in d.files] == ["host2/www/index.html"]  # written once
    with pytest.raises(TopologyError, match=r"v.yaml:\d+: nodes.host2.http\[1\]: port 80 is listed twice"):
        check.check_text(text.replace("http: [80, 8080]", "http: [80, 80]"), "v.yaml")


def test_block_only_policy_runs_no_gateway() -> None:
    text = LAB.read_text()
    start = text.index("    ipsec_policy: &s5\n")
    end = text.index("  host2:\n", start)
    block = ("    ipsec_policy:\n      rules:\n        - name: no8080\n"
             "          filter: {src: 10.2.27.0/25, dst: 10.0.1.0/24, protocol: tcp, dst_port: 8080}\n"
             "          action: block\n")
    text = text[:start] + block + text[end:]
    text = text.replace("    ipsec_policy: *s5\n", "", 2)  # vm1, vm2: no policy either
    plan = compile_plan(check.check_text(text, "v.yaml"), BASE)
    d = plan.daemons_of(hostpolicy_plan.HOST_GATEWAY)
    assert len(d) == 1 and d[0].argv == () and d[0].files == () and d[0].info["connections"] == 0
    shown = plan_text(plan)
    assert "daemon host-ipsec: no process (steering only)" in shown
    assert "steer: rule priority 2000 from 10.2.27.0/25 to 10.0.1.0/24 ipproto tcp dport 8080 prohibit" in shown
