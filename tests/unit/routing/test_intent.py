"""Routing intent refuses bad values with a ConfigError naming the field."""

from __future__ import annotations

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.routing.intent import (
    BfdProfile,
    BgpTimers,
    HubRoutingPreference,
    Neighbor,
    RoutingNode,
    StaticRoute,
)


def _node(**kw) -> RoutingNode:
    base = dict(name="ce", asn=65001, router_id="1.1.1.1")
    base.update(kw)
    return RoutingNode(**base)


def test_valid_node_and_daemons() -> None:
    n = _node(neighbors=(Neighbor("msee1", "192.168.10.2", 12076, bfd=True),),
              static_routes=(StaticRoute("10.9.0.0/16", "blackhole"),))
    assert n.daemons == ("zebra", "bgpd", "staticd", "bfdd")
    assert _node().daemons == ("zebra", "bgpd")


@pytest.mark.parametrize(("kw", "field"), [
    (dict(asn=0), "ce.asn"),
    (dict(asn=2**32), "ce.asn"),
    (dict(router_id="1.1.1"), "router_id"),
    (dict(originate=("10.0.1.1/24",)), "originate"),
    (dict(name="bad name"), "node.name"),
    (dict(maximum_paths=0), "maximum_paths"),
])
def test_bad_node_values(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _node(**kw)


def test_duplicate_neighbour_refused() -> None:
    a = Neighbor("m1", "192.168.10.2", 12076)
    with pytest.raises(ConfigError, match="twice"):
        _node(neighbors=(a, Neighbor("m2", "192.168.10.2", 12076)))
    with pytest.raises(ConfigError, match="twice"):
        _node(neighbors=(a, Neighbor("m1", "192.168.10.6", 12076)))


def test_prepend_on_ibgp_refused() -> None:
    with pytest.raises(ConfigError, match="eBGP only"):
        _node(neighbors=(Neighbor("x", "10.0.0.1", 65001, prepend=1),))


@pytest.mark.parametrize(("kw", "field"), [
    (dict(address="10.0.0.300"), "address"),
    (dict(remote_asn=-1), "remote_asn"),
    (dict(advertise="10.0.0.0/8"), "advertise"),
    (dict(advertise=("10.0.0.0/33",)), "advertise"),
    (dict(prepend=11), "prepend"),
    (dict(ebgp_multihop=0), "ebgp_multihop"),
    (dict(weight=70000), "weight"),
])
def test_bad_neighbour_values(kw: dict, field: str) -> None:
    base = dict(name="n", address="10.0.0.1", remote_asn=65515)
    base.update(kw)
    with pytest.raises(ConfigError, match=field):
        Neighbor(**base)


@pytest.mark.parametrize(("keepalive", "hold"), [(0, 9), (3, 2), (4, 10), (60, 90)])
def test_bad_timers(keepalive: int, hold: int) -> None:
    with pytest.raises(ConfigError, match="timers"):
        BgpTimers(keepalive=keepalive, hold=hold)


def test_bfd_profile() -> None:
    assert BfdProfile().detection_seconds == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="detect_multiplier"):
        BfdProfile(detect_multiplier=1)
    with pytest.raises(ConfigError, match="receive_interval_ms"):
        BfdProfile(receive_interval_ms=5)


@pytest.mark.parametrize(("text", "expected"), [
    ("ExpressRoute", HubRoutingPreference.EXPRESSROUTE),
    ("VpnGateway", HubRoutingPreference.VPN),
    ("vpn", HubRoutingPreference.VPN),
    ("AS Path", HubRoutingPreference.ASPATH),
    ("ASPath", HubRoutingPreference.ASPATH),
])
def test_preference_spellings(text: str, expected: HubRoutingPreference) -> None:
    assert HubRoutingPreference.parse(text) is expected


def test_preference_unknown() -> None:
    with pytest.raises(ConfigError, match="hub_routing_preference"):
        HubRoutingPreference.parse("Fastest")


def test_static_route_prefix_checked() -> None:
    with pytest.raises(ConfigError, match="static_routes"):
        StaticRoute("10.0.0.1/8", "blackhole")
