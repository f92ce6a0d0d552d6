"""Which prefixes a connection routes into its tun (gateway/routes.py): the issue-12 class of bug
-- a responder routed the negotiated selectors as whole prefixes, its own LAN and IKE address
included, and swallowed its own IKE_AUTH reply -- for every role and mode."""

from __future__ import annotations

import ipaddress

from ipsecemu.config.connection import parse_ts
from ipsecemu.config.gateway import TunnelConfig
from ipsecemu.gateway.routes import plan_routes


def plan(remote: list[str], local: list[str], *, mode: str = "tunnel", me: str = "10.0.1.4", peer: str = "10.2.27.4",
         tunnel: TunnelConfig | None = None):  # type: ignore[no-untyped-def]
    return plan_routes(tunnel or TunnelConfig("t0"), mode=mode, local_addr=me, remote_addr=peer,
                       local_ts=[parse_ts(x) for x in local], remote_ts=[parse_ts(x) for x in remote])


def nets(*xs: str) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.ip_network(x) for x in xs)


def test_tunnel_mode_routes_the_remote_selectors() -> None:
    p = plan(["10.2.0.0/16", "10.3.0.0/16[tcp/80]"], ["10.1.0.0/24"], me="192.0.2.1", peer="192.0.2.2")
    assert p.nets == nets("10.2.0.0/16", "10.3.0.0/16") and p.prefsrc is None and p.skipped == ()


def test_responder_never_routes_its_own_lan_or_ike_address() -> None:
    """The issue's responder: the remote selectors it was given hold its own LAN (and IKE address)."""
    p = plan(["10.0.1.0/24", "10.2.27.0/25"], ["10.0.1.0/24"])
    assert p.nets == nets("10.2.27.0/25")
    assert p.skipped == ("10.0.1.0/24: contains our IKE address 10.0.1.4",)
    # a prefix that holds our selectors but not our IKE address: still ours, not routed
    p = plan(["10.0.0.0/16"], ["10.0.5.0/24"], me="192.0.2.1", peer="192.0.2.2")
    assert p.nets == () and p.skipped == ("10.0.0.0/16: contains our own selector 10.0.5.0/24",)
    # a remote prefix inside a wide local selector is the peer's (hub and spokes): routed
    assert plan(["10.2.0.0/16"], ["10.0.0.0/8"], me="192.0.2.1", peer="192.0.2.2").nets == nets("10.2.0.0/16")
    # everything is never routed from selectors
    p = plan(["0.0.0.0/0"], ["10.1.0.0/24"], me="192.0.2.1", peer="192.0.2.2")
    assert p.nets == () and "covers everything" in p.skipped[0]


def test_transport_mode_routes_only_the_peer_host_in_its_own_table() -> None:
    t108 = TunnelConfig("t0", table=108)
    # the selectors are prefixes with a port: only the peer's /32, with our address as source
    p = plan(["10.2.27.0/25[tcp/8080]"], ["10.0.1.0/24[tcp]"], mode="transport", tunnel=t108)
    assert p.nets == nets("10.2.27.4/32") and p.prefsrc == "10.0.1.4" and p.skipped == ()
    # in the main table that /32 would carry our own IKE and ESP to the peer into the tun
    p = plan(["10.2.27.4/32[tcp/8080]"], ["10.0.1.4/32[tcp]"], mode="transport")
    assert p.nets == () and "set tunnel.table" in p.skipped[0]
    # a peer outside the selectors: nothing (transport protects the two hosts only)
    p = plan(["10.2.27.128/25"], ["10.0.1.4/32"], mode="transport", tunnel=t108)
    assert p.nets == () and "outside its selectors" in p.skipped[0]
    # IPv6
    p = plan(["2001:db8:2::/64[tcp/8080]"], ["2001:db8:1::/64"], mode="transport", me="2001:db8:1::4",
             peer="2001:db8:2::4", tunnel=t108)
    assert p.nets == (ipaddress.ip_network("2001:db8:2::4/128"),) and p.prefsrc == "2001:db8:1::4"


def test_explicit_and_external_routes_are_the_users() -> None:
    assert plan(["10.0.1.0/24"], ["10.0.1.0/24"], tunnel=TunnelConfig("t0", routes=nets("10.9.0.0/16"))).nets \
        == nets("10.9.0.0/16")
    assert plan(["10.2.0.0/16"], ["10.1.0.0/24"], tunnel=TunnelConfig("t0", external_routes=True)).nets == ()
