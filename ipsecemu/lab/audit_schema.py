"""The ``audit:`` section of a lab file: which links are untrusted and which flows must be encrypted,
clear or blocked there.

::

    audit:
      untrusted: [ce:msee1, ce:msee2, hub:msee1, hub:msee2]   # NODE:IFACE, captured by `lab audit`
      flows:
        - {from: onprem1, to: spoke1, proto: icmp, expect: encrypted}
        - {from: onprem1, to: 10.51.231.4, proto: tcp, port: 8080, expect: encrypted}
        - {from: onprem2, to: spoke1, proto: udp, ports: [5000, 5001], expect: clear, both_directions: false}

:func:`parse_audit` checks shapes (called by the topology validator, so every loader sees them);
:func:`check_audit` checks references to nodes, interfaces and addresses (called by ``lab check``,
which ``lab up`` and ``lab audit`` run first).  This module imports nothing of the lab package, so
``topology`` can import it without a cycle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipsecemu.config.kit import Doc, FieldPath

EXPECTATIONS = ("encrypted", "clear", "blocked")
PROTOCOLS = ("icmp", "tcp", "udp")
_FLOW_KEYS = ("name", "from", "to", "proto", "port", "ports", "expect", "both_directions")


@dataclass(frozen=True)
class AuditFlow:
    """One declared flow; ``dst`` is a node name or an IP address of a node."""

    src: str
    dst: str
    proto: str
    expect: str
    ports: tuple[int, ...] = ()  # empty for icmp
    both_directions: bool = True
    name: str = ""
    path: FieldPath = ()  # where it was declared (for errors found later)

    @property
    def label(self) -> str:
        return self.name or f"{self.src}->{self.dst} {self.proto}"


@dataclass(frozen=True)
class Audit:
    untrusted: tuple[tuple[str, str], ...]  # (node, iface)
    flows: tuple[AuditFlow, ...]


def parse_audit(doc: Doc, value: Any, path: FieldPath = ("audit",)) -> Audit:
    """The ``audit:`` mapping -> :class:`Audit`; shape errors carry file:line:field."""
    m = doc.mapping(value, path, "a mapping with 'untrusted' and 'flows'")
    doc.keys(m, path, ("untrusted", "flows"), ("untrusted", "flows"))
    untrusted: list[tuple[str, str]] = []
    for i, v in enumerate(doc.list_(m["untrusted"], (*path, "untrusted"))):
        p = (*path, "untrusted", i)
        if not isinstance(v, str) or v.count(":") != 1 or not all(v.split(":")):
            raise doc.error(p, f"expected 'node:iface', got {v!r}")
        ep = (v.split(":")[0], v.split(":")[1])
        if ep in untrusted:
            raise doc.error(p, f"'{v}' is listed twice")
        untrusted.append(ep)
    if not untrusted:
        raise doc.error((*path, "untrusted"), "list at least one untrusted link end (node:iface)")
    flows = doc.list_(m["flows"], (*path, "flows"))
    if not flows:
        raise doc.error((*path, "flows"), "declare at least one flow")
    return Audit(tuple(untrusted), tuple(_flow(doc, f, (*path, "flows", i)) for i, f in enumerate(flows)))


def _flow(doc: Doc, v: Any, path: FieldPath) -> AuditFlow:
    m = doc.mapping(v, path)
    doc.keys(m, path, _FLOW_KEYS, ("from", "to", "proto", "expect"))
    src = doc.str_(m["from"], (*path, "from"))
    dst = m["to"]
    if not isinstance(dst, str) or not dst:
        raise doc.error((*path, "to"), f"must be a node name or an IP address, got {dst!r}")
    proto = m["proto"]
    if proto not in PROTOCOLS:
        raise doc.error((*path, "proto"), f"unknown protocol {proto!r} (one of: {', '.join(PROTOCOLS)})")
    expect = m["expect"]
    if expect not in EXPECTATIONS:
        raise doc.error((*path, "expect"), f"unknown expectation {expect!r} (one of: {', '.join(EXPECTATIONS)})")
    if "port" in m and "ports" in m:
        raise doc.error((*path, "ports"), "use either 'port' or 'ports', not both")
    ports: tuple[int, ...] = ()
    if "port" in m:
        ports = (doc.int_(m["port"], (*path, "port"), 1, 65535),)
    elif "ports" in m:
        lst = doc.list_(m["ports"], (*path, "ports"))
        ports = tuple(doc.int_(x, (*path, "ports", j), 1, 65535) for j, x in enumerate(lst))
        if not ports:
            raise doc.error((*path, "ports"), "list at least one port")
    if proto == "icmp" and ports:
        raise doc.error((*path, "port" if "port" in m else "ports"), "icmp has no ports")
    if proto != "icmp" and not ports:
        raise doc.error(path, f"a {proto} flow needs 'port' or 'ports'")
    both = doc.bool_(m["both_directions"], (*path, "both_directions")) if "both_directions" in m else True
    name = doc.str_(m["name"], (*path, "name")) if "name" in m else ""
    return AuditFlow(src, dst, proto, expect, ports, both, name, path)


def check_audit(doc: Doc, audit: Audit, addresses: Mapping[str, tuple[str, ...]],
                ifaces: Mapping[str, tuple[str, ...]]) -> None:
    """References: flow ends are nodes (or addresses of nodes), untrusted ends are existing link
    interfaces.  ``addresses``: node -> its IPs; ``ifaces``: node -> its link/segment interfaces."""
    for i, (node, iface) in enumerate(audit.untrusted):
        p: FieldPath = ("audit", "untrusted", i)
        if node not in ifaces:
            raise doc.error(p, f"unknown node '{node}'")
        if iface not in ifaces[node]:
            raise doc.error(p, f"node '{node}' has no link interface '{iface}' "
                               f"(has: {', '.join(ifaces[node]) or 'none'})")
    for flow in audit.flows:
        if flow.src not in addresses:
            raise doc.error((*flow.path, "from"), f"unknown node '{flow.src}'")
        owner = dst_node(flow.dst, addresses)
        if owner is None:
            raise doc.error((*flow.path, "to"), f"'{flow.dst}' is neither a node nor an address of one "
                                                "(the audit runs the server in the destination node)")
        if owner == flow.src:
            raise doc.error((*flow.path, "to"), "a flow needs two different nodes")
        if flow.both_directions and not addresses[flow.src]:
            raise doc.error((*flow.path, "from"), f"node '{flow.src}' has no address to answer on")
        if not addresses[owner]:
            raise doc.error((*flow.path, "to"), f"node '{owner}' has no address")


def dst_node(dst: str, addresses: Mapping[str, tuple[str, ...]]) -> str | None:
    """The node a flow's ``to`` names: the node itself, or the node owning that address."""
    if dst in addresses:
        return dst
    try:
        ip = str(ipaddress.ip_address(dst))
    except ValueError:
        return None
    return next((n for n, ips in addresses.items() if ip in ips), None)
