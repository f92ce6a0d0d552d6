"""Azure's numbers and the documented Virtual WAN hub route selection
(about-virtual-hub-routing-preference.md): LPM, static over BGP, hub routing preference, ECMP."""

from __future__ import annotations

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.routing.azure import (
    HUB_ASN,
    MSEE_ASN,
    HubCandidate,
    Peer,
    check_apipa_bgp_address,
    check_customer_asn,
    hub_node,
    hub_path_attributes,
    msee_node,
    select_hub_routes,
    vpn_instance_node,
)
from ipsecemu.routing.intent import HubRoutingPreference as H
from ipsecemu.routing.intent import PathKind, StaticRoute

ER, VPN = PathKind.EXPRESSROUTE, PathKind.VPN
S3 = [HubCandidate("10.0.1.0/24", ER, 2, "msee1"), HubCandidate("10.0.1.0/24", ER, 2, "msee2"),
      HubCandidate("10.0.1.0/24", VPN, 1, "instance0"), HubCandidate("10.0.1.0/24", VPN, 1, "instance1")]


def _via(dest: str, cands: list[HubCandidate], pref: H) -> set[str]:
    return {c.via for c in select_hub_routes(dest, cands, pref)}


def test_numbers() -> None:
    assert MSEE_ASN == 12076 and HUB_ASN == 65515


@pytest.mark.parametrize(("pref", "expected"), [
    (H.EXPRESSROUTE, {"msee1", "msee2"}),  # S3 warning: ER, in clear
    (H.VPN, {"instance0", "instance1"}),
    (H.ASPATH, {"instance0", "instance1"}),  # "65001" is shorter than "12076 65001"
])
def test_s3_same_prefix_both_ways(pref: H, expected: set[str]) -> None:
    assert _via("10.0.1.7", S3, pref) == expected


def test_aspath_prepend_changes_outcome() -> None:
    prepended = [c if c.kind is ER else HubCandidate(c.prefix, c.kind, 3, c.via) for c in S3]
    assert _via("10.0.1.7", prepended, H.ASPATH) == {"msee1", "msee2"}


def test_aspath_tie_goes_to_expressroute() -> None:
    tie = [HubCandidate("10.0.1.0/24", ER, 2, "msee1"), HubCandidate("10.0.1.0/24", VPN, 2, "instance0")]
    assert _via("10.0.1.7", tie, H.ASPATH) == {"msee1"}


def test_expressroute_mode_then_shortest_as_path() -> None:
    c = [HubCandidate("10.0.1.0/24", ER, 3, "msee1"), HubCandidate("10.0.1.0/24", ER, 2, "msee2"),
         HubCandidate("10.0.1.0/24", VPN, 1, "instance0")]
    assert _via("10.0.1.7", c, H.EXPRESSROUTE) == {"msee2"}


@pytest.mark.parametrize("pref", list(H))
def test_s1_longest_prefix_wins_whatever_the_preference(pref: H) -> None:
    c = [HubCandidate("10.0.0.0/16", ER, 2, "msee1"), HubCandidate("10.0.1.0/24", VPN, 1, "instance0")]
    assert _via("10.0.1.7", c, pref) == {"instance0"}
    assert _via("10.0.2.7", c, pref) == {"msee1"}
    assert _via("10.1.0.1", c, pref) == set()


def test_static_over_bgp() -> None:
    c = [*S3, HubCandidate("10.0.1.0/24", None, 0, "static")]
    for pref in H:
        assert _via("10.0.1.7", c, pref) == {"static"}


def test_hub_path_attributes_rank_as_documented() -> None:
    # local-preference first, then (ASPath mode) AS path, then MED towards ER.
    assert hub_path_attributes(H.EXPRESSROUTE, ER)[0] > hub_path_attributes(H.EXPRESSROUTE, VPN)[0]
    assert hub_path_attributes(H.VPN, VPN)[0] > hub_path_attributes(H.VPN, ER)[0]
    er, vpn = hub_path_attributes(H.ASPATH, ER), hub_path_attributes(H.ASPATH, VPN)
    assert er[0] == vpn[0] and er[1] < vpn[1]
    assert hub_path_attributes(H.VPN, PathKind.INTERNAL) is None


@pytest.mark.parametrize("asn", [12076, 65515, 65520])
def test_reserved_asn_refused(asn: int) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        check_customer_asn(asn, "ce.asn")


def test_customer_asn_accepted() -> None:
    check_customer_asn(65001, "ce.asn")
    check_customer_asn(65521, "ce.asn")


def test_apipa_range() -> None:
    check_apipa_bgp_address("169.254.21.1", "x")
    check_apipa_bgp_address("169.254.22.255", "x")
    with pytest.raises(ConfigError, match="APIPA"):
        check_apipa_bgp_address("169.254.23.1", "x")


def test_builders() -> None:
    ce = [Peer("ce", "192.168.10.1", 65001)]
    msee = msee_node("msee1", "12.0.76.1", ce=ce, hub=[Peer("hub", "192.168.20.2", HUB_ASN)])
    assert msee.asn == MSEE_ASN and all(n.bfd and n.advertise is None for n in msee.neighbors)
    inst = vpn_instance_node("inst0", "10.51.230.4", ce=[Peer("ce", "169.254.21.2", 65001)],
                             hub=[Peer("hub", "10.51.230.17", HUB_ASN)], apipa=True)
    to_ce, to_hub = inst.neighbors
    assert inst.asn == HUB_ASN and to_ce.ebgp_multihop == 2 and to_ce.passive and to_ce.weight
    assert to_hub.next_hop_self and to_hub.kind is PathKind.INTERNAL
    hub = hub_node("hub", "10.51.230.1", ["10.51.230.0/24"], msees=[Peer("m", "192.168.20.1", MSEE_ASN)],
                   instances=[Peer("i0", "10.51.230.18", HUB_ASN)], preference=H.VPN,
                   static_routes=[StaticRoute("10.9.0.0/16", "blackhole")])
    assert [n.kind for n in hub.neighbors] == [ER, VPN] and hub.hub_preference is H.VPN
    assert "staticd" in hub.daemons
    with pytest.raises(ConfigError, match="reserved"):
        msee_node("m", "1.1.1.1", ce=[Peer("ce", "192.168.10.1", 65515)], hub=[])
