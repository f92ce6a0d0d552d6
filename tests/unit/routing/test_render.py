"""Generated frr.conf: the policy the intent asks for, and FRR's own parser (``vtysh --dryrun``) accepts
it — an independent check that the text is valid FRR 8.4 configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.routing.azure import HUB_ASN, MSEE_ASN, Peer, hub_node, msee_node, vpn_instance_node
from ipsecemu.routing.frr import check_config, daemons_for_config
from ipsecemu.routing.intent import BgpTimers, Neighbor, PathKind, RoutingNode, StaticRoute
from ipsecemu.routing.intent import HubRoutingPreference as H
from ipsecemu.routing.render import render_frr_conf

needs_vtysh = pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR not installed (make deps)")


def _hub(pref: H) -> RoutingNode:
    return hub_node("hub", "10.51.230.1", ["10.51.230.0/24", "10.51.231.0/24"],
                    msees=[Peer("msee1", "192.168.20.1", MSEE_ASN)],
                    instances=[Peer("inst0", "10.51.230.18", HUB_ASN), Peer("inst1", "10.51.230.22", HUB_ASN)],
                    preference=pref, static_routes=[StaticRoute("10.52.0.0/16", "blackhole")])


def _ce() -> RoutingNode:
    t = BgpTimers(keepalive=3, hold=10, connect=2)
    return RoutingNode("ce", 65001, "1.1.1.1", originate=("10.0.0.0/16", "10.0.1.0/24"), neighbors=(
        Neighbor("msee1", "192.168.10.2", MSEE_ASN, PathKind.EXPRESSROUTE, t, bfd=True, advertise=("10.0.0.0/16",)),
        Neighbor("inst0", "169.254.21.1", HUB_ASN, PathKind.VPN, t, advertise=("10.0.1.0/24",), prepend=2,
                 ebgp_multihop=2, update_source="169.254.21.2"),
        Neighbor("quiet", "192.0.2.1", 64999, advertise=()),
    ))


def _block(conf: str, header: str) -> list[str]:
    """The lines of the block that starts with ``header`` up to its ``exit``."""
    lines = conf.splitlines()
    start = lines.index(header)
    return lines[start + 1:lines.index("exit", start)]


@pytest.mark.parametrize(("pref", "er", "vpn"), [
    (H.EXPRESSROUTE, ("200", "0"), ("100", "10")),
    (H.VPN, ("100", "0"), ("200", "10")),
    (H.ASPATH, ("100", "0"), ("100", "10")),
])
def test_hub_policy_per_preference(pref: H, er: tuple[str, str], vpn: tuple[str, str]) -> None:
    conf = render_frr_conf(_hub(pref))
    assert _block(conf, "route-map RM-msee1-IN permit 10") == [f" set local-preference {er[0]}",
                                                              f" set metric {er[1]}"]
    for inst in ("inst0", "inst1"):
        assert _block(conf, f"route-map RM-{inst}-IN permit 10") == [f" set local-preference {vpn[0]}",
                                                                    f" set metric {vpn[1]}"]
    assert ("bgp always-compare-med" in conf) == (pref is H.ASPATH)
    assert "  maximum-paths 2" in conf and "  maximum-paths ibgp 2" in conf
    assert "ip route 10.52.0.0/16 blackhole" in conf
    assert "router bgp 65515" in conf and " neighbor 192.168.20.1 remote-as 12076" in conf


def test_ce_advertises_per_neighbour() -> None:
    conf = render_frr_conf(_ce())
    assert "ip prefix-list PL-msee1-OUT seq 5 permit 10.0.0.0/16" in conf
    assert "ip prefix-list PL-inst0-OUT seq 5 permit 10.0.1.0/24" in conf
    assert _block(conf, "route-map RM-inst0-OUT permit 10") == [" match ip address prefix-list PL-inst0-OUT",
                                                               " set as-path prepend 65001 65001"]
    assert _block(conf, "route-map RM-quiet-OUT deny 10") == []
    assert " neighbor 169.254.21.1 ebgp-multihop 2" in conf
    assert " neighbor 169.254.21.1 update-source 169.254.21.2" in conf
    assert " neighbor 192.168.10.2 timers 3 10" in conf and " neighbor 192.168.10.2 timers connect 2" in conf
    assert " neighbor 192.168.10.2 bfd profile fast" in conf
    assert " neighbor 169.254.21.1 bfd profile fast" not in conf
    assert _block(conf, "bfd")[:4] == [" profile fast", "  detect-multiplier 3", "  receive-interval 300",
                                       "  transmit-interval 300"]
    assert "  network 10.0.1.0/24" in conf


def test_instance_session_options() -> None:
    inst = vpn_instance_node("inst0", "10.51.230.4", ce=[Peer("ce", "169.254.21.2", 65001)],
                             hub=[Peer("hub", "10.51.230.17", HUB_ASN)], apipa=True)
    conf = render_frr_conf(inst)
    assert " neighbor 169.254.21.2 passive" in conf
    assert "  neighbor 10.51.230.17 next-hop-self" in conf
    assert _block(conf, "route-map RM-ce-IN permit 10") == [" set weight 100"]


def test_no_bfd_section_without_bfd() -> None:
    node = RoutingNode("r", 65001, "1.1.1.1", neighbors=(Neighbor("p", "10.0.0.2", 65002),))
    assert "\nbfd\n" not in render_frr_conf(node)


@needs_vtysh
@pytest.mark.parametrize("node", [_hub(H.EXPRESSROUTE), _hub(H.VPN), _hub(H.ASPATH), _ce(),
                                  msee_node("msee1", "12.0.76.1", ce=[Peer("ce", "192.168.10.1", 65001)],
                                            hub=[Peer("hub", "192.168.20.2", HUB_ASN)]),
                                  vpn_instance_node("inst0", "10.51.230.4", ce=[Peer("ce", "169.254.21.2", 65001)],
                                                    hub=[Peer("hub", "10.51.230.17", HUB_ASN)])],
                         ids=["hub-er", "hub-vpn", "hub-aspath", "ce", "msee", "instance"])
def test_frr_accepts_generated_config(node: RoutingNode, tmp_path: Path) -> None:
    check_config(render_frr_conf(node), tmp_path)


@needs_vtysh
def test_frr_dryrun_refuses_a_bad_line(tmp_path: Path) -> None:
    bad = render_frr_conf(_ce()).replace(" bgp log-neighbor-changes", " bgp log-neighbour-changes")
    with pytest.raises(ConfigError, match="FRR refuses"):
        check_config(bad, tmp_path)


@pytest.mark.parametrize("node", [_hub(H.VPN), _ce(), RoutingNode("r", 65001, "1.1.1.1")], ids=["hub", "ce", "bare"])
def test_config_scan_agrees_with_intent(node: RoutingNode) -> None:
    # A hand-written config is scanned for the daemons it needs; on our own configs the scan must find
    # what the intent says.
    assert set(daemons_for_config(render_frr_conf(node))) == set(node.daemons)
