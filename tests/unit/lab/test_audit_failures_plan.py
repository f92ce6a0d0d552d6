"""Which failures ``lab audit --failures`` applies to a lab, and what convergence it waits for."""

from __future__ import annotations

from ipsecemu.lab.audit_failures import plan_failures
from ipsecemu.lab.check import check_file

from support.paths import REPO  # noqa: E402


def test_er_vwan_failures() -> None:
    topo = check_file(REPO / "netns-labs" / "er-vwan.yaml")
    fs = plan_failures(topo, topo.audit)
    assert [(f.name, f.kind, f.node, f.conn, f.down, f.iface) for f in fs] == [
        ("hubgw0 down", "instance down", "hubgw0", None, ("hubgw0/ce-hubgw0",), ""),
        ("hubgw1 down", "instance down", "hubgw1", None, ("hubgw1/ce-hubgw1",), ""),
        ("hubgw0+hubgw1 down", "all instances down", "hubgw0", None, ("hubgw0/ce-hubgw0", "hubgw1/ce-hubgw1"), ""),
        ("ce-hubgw0 terminated", "tunnel terminated", "ce", "ce-hubgw0", ("ce/ce-hubgw0", "hubgw0/ce-hubgw0"), ""),
        ("ce-hubgw1 terminated", "tunnel terminated", "ce", "ce-hubgw1", ("ce/ce-hubgw1", "hubgw1/ce-hubgw1"), ""),
        # each ER link (an untrusted end, or router to router), set down at its untrusted end
        ("link ce:msee1 down", "ER link down", "ce", None, (), "msee1"),
        ("link ce:msee2 down", "ER link down", "ce", None, (), "msee2"),
        ("link hub:msee1 down", "ER link down", "hub", None, (), "msee1"),
        ("link hub:msee2 down", "ER link down", "hub", None, (), "msee2"),
    ]
    assert fs[2].nodes == ("hubgw0", "hubgw1")


def test_macsec_link_down_freezes_one_end() -> None:
    topo = check_file(REPO / "netns-labs" / "er-direct-macsec.yaml")
    fs = {f.name: f for f in plan_failures(topo, topo.audit)}
    f = fs["MACsec ce:msee1 down"]
    assert (f.kind, f.node, f.iface) == ("MACsec link down", "ce", "msee1")  # the link daemon on the ce:msee1 tap
    assert "MACsec ce:msee2 down" in fs
    assert "link ce:msee1 down" not in fs  # a MACsec port is one failure, not two
    assert list(fs)[-2:] == ["MACsec ce:msee1 down", "MACsec ce:msee2 down"]  # last: not restorable today
    # MSEE-hub links: router to router, not untrusted in this lab: down at their first end
    assert (fs["link msee1:hub down"].node, fs["link msee1:hub down"].iface) == ("msee1", "hub")


def test_without_audit_only_router_links() -> None:
    fs = plan_failures(check_file(REPO / "netns-labs" / "er-vwan.yaml"))
    assert [f.name for f in fs if f.kind == "ER link down"] == ["link msee1:hub down", "link msee2:hub down"]


def test_strongswan_lab_terminates_on_the_ipsecemu_end() -> None:
    fs = plan_failures(check_file(REPO / "tests" / "unit" / "lab" / "static" / "er-vwan-strongswan.yaml"))
    assert {f.node for f in fs if f.kind == "tunnel terminated"} == {"hubgw0", "hubgw1"}
