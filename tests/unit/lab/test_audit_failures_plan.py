"""Which single failures ``lab audit --failures`` applies to a lab, and what convergence it waits for."""

from __future__ import annotations

from ipsecemu.lab.audit_failures import plan_failures
from ipsecemu.lab.check import check_file

from support.paths import REPO  # noqa: E402


def test_er_vwan_failures() -> None:
    fs = plan_failures(check_file(REPO / "netns-labs" / "er-vwan.yaml"))
    assert [(f.name, f.kind, f.node, f.conn, f.down) for f in fs] == [
        ("hubgw0 down", "instance down", "hubgw0", None, ("hubgw0/ce-hubgw0",)),
        ("hubgw1 down", "instance down", "hubgw1", None, ("hubgw1/ce-hubgw1",)),
        ("ce-hubgw0 terminated", "tunnel terminated", "ce", "ce-hubgw0", ("ce/ce-hubgw0", "hubgw0/ce-hubgw0")),
        ("ce-hubgw1 terminated", "tunnel terminated", "ce", "ce-hubgw1", ("ce/ce-hubgw1", "hubgw1/ce-hubgw1")),
    ]


def test_strongswan_lab_terminates_on_the_ipsecemu_end() -> None:
    fs = plan_failures(check_file(REPO / "netns-labs" / "er-vwan-strongswan.yaml"))
    assert {f.node for f in fs if f.kind == "tunnel terminated"} == {"hubgw0", "hubgw1"}
