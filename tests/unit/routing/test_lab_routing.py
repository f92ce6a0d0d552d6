"""The lab's `routing:` intent (no root): located errors from `lab check`, and the FRR configs the plan
generates for each role (CE, MSEE, instance, hub), checked by FRR's own parser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ipsecemu.lab import check
from ipsecemu.lab.plan import FRR, compile_plan
from ipsecemu.lab.plan import frr as frr_plan
from ipsecemu.lab.topology import TopologyError
from ipsecemu.routing.frr import check_config

from support.paths import REPO  # noqa: E402

S1 = REPO / "netns-labs" / "er-vwan.yaml"
BGP_LABS = ["er-vwan", "er-vwan-s2", "er-vwan-s3", "er-vwan-s3-vpn", "er-vwan-s3-aspath"]


def _conf(lab: str, node: str) -> str:
    plan = compile_plan(check.check_file(REPO / "netns-labs" / f"{lab}.yaml"), Path("/run/ipsecemu"))
    return plan.file(f"{node}/frr/frr.conf").text


@pytest.mark.parametrize("old,new,where,msg", [
    ("preference: ExpressRoute ", "preference: Fastest ", "routing.preference", "not one of ExpressRoute"),
    ("timers: lab ", "timers: quick ", "routing.timers", "not one of lab, azure"),
    ("asn: 65001", "asn: 65515", "routing.ce.asn", "reserved by Azure"),
    ("msees: [msee1, msee2]", "msees: [msee1, msee9]", "routing.msees[1]", "unknown node 'msee9'"),
    ("msees: [msee1, msee2]", "msees: [msee1, spoke1]", "routing.msees[1]", "must be kind 'router'"),
    ("prefixes: [10.51.230.0/24, 10.51.231.0/24]", "prefixes: [10.51.230.1/24]", "routing.hub.prefixes[0]",
     "host bits zero"),
    ("bgp: {ce: 169.254.21.2, hubgw0: 169.254.21.1}", "bgp: {ce: 172.24.127.211, hubgw0: 169.254.21.1}",
     "vpn.connections[0].bgp.ce", "IKE address"),
    ("bgp: {ce: 169.254.21.2, hubgw0: 169.254.21.1}", "bgp: {ce: 169.254.21.2}", "vpn.connections[0].bgp",
     "both ends"),
    ("    vpn: {advertise: [10.0.1.0/24]}", "    vpn: {advertise: [10.0.1.0/24], prepend: 11}",
     "routing.ce.vpn.prepend", "11"),
])
def test_routing_mistakes_are_located(old: str, new: str, where: str, msg: str) -> None:
    text = S1.read_text()
    assert old in text, old
    with pytest.raises(TopologyError) as ei:
        check.check_text(text.replace(old, new, 1), "er-vwan.yaml")
    err = str(ei.value)
    assert f": {where}: " in err and msg in err and err.startswith("er-vwan.yaml:"), err
    assert "\n" not in err


def test_roles_and_sessions_of_s1() -> None:
    topo = check.check_file(S1)
    assert frr_plan.routing_nodes(topo) == ["ce", "msee1", "msee2", "hub", "hubgw0", "hubgw1"]
    nodes = frr_plan.build_nodes(topo)
    ce = nodes["ce"]
    assert (ce.asn, ce.router_id) == (65001, "172.24.127.211")
    er = {n.address: n for n in ce.neighbors if n.remote_asn == 12076}
    vpn = {n.address: n for n in ce.neighbors if n.remote_asn == 65515}
    assert set(er) == {"192.168.100.2", "192.168.100.6"}
    assert all(n.advertise == ("10.0.0.0/16", "172.24.127.211/32") and n.bfd for n in er.values())
    assert set(vpn) == {"169.254.21.1", "169.254.22.1"}
    assert vpn["169.254.21.1"].update_source == "169.254.21.2" and vpn["169.254.21.1"].ebgp_multihop == 2
    assert all(n.advertise == ("10.0.1.0/24",) and n.local_preference == 200 for n in vpn.values())
    # the hub range holds the IKE peers: never learnt through the tunnel it would carry
    assert all(n.deny_in == ("10.51.230.0/24",) for n in vpn.values())
    inst = nodes["hubgw0"]
    assert {n.address for n in inst.neighbors} == {"169.254.21.2", "10.51.230.1"}
    assert next(n for n in inst.neighbors if n.address == "169.254.21.2").passive  # APIPA: Azure listens
    hub = nodes["hub"]
    assert hub.originate == ("10.51.230.0/24", "10.51.231.0/24") and hub.hub_preference is not None
    assert {n.address for n in hub.neighbors} == {"192.168.101.1", "192.168.101.5", "10.51.230.4", "10.51.230.5"}


def test_tunnels_carry_bgp_addresses_and_no_route_agent() -> None:
    plan = compile_plan(check.check_file(S1), Path("/run/ipsecemu"))
    gw = plan.file("ce/gateway.yaml").text
    assert "address: 169.254.21.2/32" in gw and "- 169.254.21.1/32" in gw
    assert plan.daemons == () and plan.route_plan is None  # BGP moves the routes, not the agent
    assert len(plan.daemons_of(FRR)) == 6
    assert all(not r.dst.startswith(("10.0.", "10.51.")) for n in plan.nodes if n.kind != "host" for r in n.routes)


def test_bgp_tun_devices_are_planned_for_before_zebra() -> None:
    """Every ipsecemu end of a BGP tunnel gets its tun (name and BGP /32 exactly as in its gateway.yaml)
    made by the FRR service before zebra starts; MSEEs and the hub have none, nor has a charon CE."""
    plan = compile_plan(check.check_file(S1), Path("/run/ipsecemu"))
    tuns = {d.node: d.info["tunnels"] for d in plan.daemons_of(FRR)}
    assert tuns["ce"] == [{"dev": "vpn0", "address": "169.254.21.2/32"}, {"dev": "vpn1", "address": "169.254.22.2/32"}]
    assert tuns["hubgw0"] == [{"dev": "vpn0", "address": "169.254.21.1/32"}]
    assert tuns["hubgw1"] == [{"dev": "vpn0", "address": "169.254.22.1/32"}]
    assert tuns["msee1"] == tuns["msee2"] == tuns["hub"] == []
    for node, want in tuns.items():  # the gateway attaches to the very device, with the same address
        for t in want:
            gw = plan.file(f"{node}/gateway.yaml").text
            assert f"name: {t['dev']}\n      address: {t['address']}" in gw, gw
    ss = compile_plan(check.check_file(REPO / "netns-labs" / "er-vwan-strongswan.yaml"), Path("/run/ipsecemu"))
    ss_tuns = {d.node: d.info["tunnels"] for d in ss.daemons_of(FRR)}
    assert ss_tuns["ce"] == [] and ss_tuns["hubgw0"] == [{"dev": "vpn0", "address": "169.254.21.1/32"}]


@pytest.mark.parametrize("lab,pref", [("er-vwan-s3", "200"), ("er-vwan-s3-vpn", "100"),
                                      ("er-vwan-s3-aspath", "100")])
def test_hub_policy_per_preference(lab: str, pref: str) -> None:
    conf = _conf(lab, "hub")
    er_in = conf.split("route-map RM-msee1-IN permit 10\n", 1)[1].split("exit", 1)[0]
    assert f"set local-preference {pref}" in er_in
    assert ("bgp always-compare-med" in conf) == lab.endswith("aspath")


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR not installed")
@pytest.mark.parametrize("lab", BGP_LABS)
def test_every_generated_config_parses_in_frr(lab: str, tmp_path: Path) -> None:
    plan = compile_plan(check.check_file(REPO / "netns-labs" / f"{lab}.yaml"), Path("/run/ipsecemu"))
    for d in plan.daemons_of(FRR):
        check_config(d.files[0].text, tmp_path / str(d.node))


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR not installed")
def test_user_ce_config_is_checked_and_used(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    good = tmp_path / "my-ce.conf"
    good.write_text(_conf("er-vwan", "ce").replace("hostname ce", "hostname my-ce"))
    text = S1.read_text().replace("    asn: 65001\n", "    asn: 65001\n    frr_config: my-ce.conf\n", 1)
    lab.write_text(text)
    plan = compile_plan(check.check_file(lab), Path("/run/ipsecemu"))
    assert "hostname my-ce" in plan.file("ce/frr/frr.conf").text  # the user's, not the generated one
    good.write_text("router bgp 65001\n neighbor 192.168.100.2 remote-ass 12076\n")
    with pytest.raises(TopologyError, match=r"lab.yaml:\d+: routing.ce.frr_config: FRR \(vtysh --dryrun\) refuses"):
        check.check_file(lab)
    good.unlink()
    with pytest.raises(TopologyError, match=r"routing.ce.frr_config: cannot read"):
        check.check_file(lab)
