"""`lab status` routing lines from FRR's JSON (no root): each prefix's path named after the BGP peer it came
from, and the one FALLBACK line when every in-tunnel session of the CE is down."""

from __future__ import annotations

from typing import Any

import pytest

from ipsecemu.lab import svc_frr

SUMMARY = {"peers": {
    "192.168.100.2": {"state": "Established", "pfxRcd": 2, "pfxSnt": 2, "desc": "msee1 (expressroute)"},
    "169.254.21.1": {"state": "Established", "pfxRcd": 1, "pfxSnt": 1, "desc": "hubgw0 (vpn)"},
    "169.254.22.1": {"state": "Connect", "pfxRcd": 0, "pfxSnt": 0, "desc": "hubgw1 (vpn)"}}}
ROUTES = {
    "10.51.231.0/24": [{"protocol": "bgp", "selected": True, "nexthops": [
        {"ip": "169.254.21.1", "active": True}, {"ip": "169.254.21.1", "interfaceName": "vpn0", "active": True}]}],
    "10.51.230.0/24": [{"protocol": "bgp", "selected": True, "nexthops": [{"ip": "192.168.100.2", "active": True}]},
                       {"protocol": "bgp", "selected": False, "nexthops": [{"ip": "169.254.21.1", "active": True}]}],
    "10.9.0.0/16": [{"protocol": "static", "selected": True, "nexthops": [{"interfaceName": "lan1", "active": True}]}],
    "10.0.1.0/24": [{"protocol": "connected", "selected": True, "nexthops": [{"interfaceName": "lan1", "active": True}]}],
}


class FakeFrr:
    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary

    def vtysh_json(self, command: str, daemon: str | None = None) -> Any:
        if command.startswith("show bgp ipv4 unicast 10."):  # the hub's candidates for one prefix
            return {"paths": [{"peer": {"peerId": "192.168.100.2"}}, {"peer": {"peerId": "169.254.21.1"}}]}
        return self.summary if "summary" in command else ROUTES


def test_paths_are_named_after_their_peer() -> None:
    st = svc_frr.node_status(FakeFrr(SUMMARY), "ce")  # type: ignore[arg-type]
    paths = {p["prefix"]: (p["path"], p["via"]) for p in st["paths"]}
    assert paths == {"10.51.231.0/24": ("VPN", ["hubgw0 (vpn)"]),  # a recursive next hop once
                     "10.51.230.0/24": ("ER", ["msee1 (expressroute)"]),
                     "10.9.0.0/16": ("static", ["dev lan1"])}  # connected routes are not paths
    assert [s["state"] for s in st["sessions"]] == ["Established", "Connect", "Established"]


@pytest.mark.parametrize("states,fallback", [(("Connect", "Idle"), True), (("Established", "Idle"), False)])
def test_fallback_line_only_when_every_tunnel_session_is_down(monkeypatch: pytest.MonkeyPatch,
                                                              states: tuple[str, str], fallback: bool) -> None:
    summary = {"peers": {**SUMMARY["peers"]}}
    summary["peers"]["169.254.21.1"] = {**summary["peers"]["169.254.21.1"], "state": states[0]}
    summary["peers"]["169.254.22.1"] = {**summary["peers"]["169.254.22.1"], "state": states[1]}
    monkeypatch.setattr(svc_frr, "instance", lambda state, node: FakeFrr(summary))

    class State:
        data = {"routing": {"ce": "ce"}}

    out = svc_frr.routing_status(State())  # type: ignore[arg-type]
    assert (out["fallback"] is not None) == fallback
    if fallback:
        assert "falls back to ExpressRoute, IN CLEAR" in out["fallback"]


def test_hub_warns_when_a_vpn_prefix_goes_over_er() -> None:
    st = svc_frr.node_status(FakeFrr(SUMMARY), "hub")  # type: ignore[arg-type]
    assert [w.split(" ")[0] for w in st["warnings"]] == ["10.51.230.0/24"]  # the one the VPN also offers
    assert "crosses ER in clear" in st["warnings"][0]
