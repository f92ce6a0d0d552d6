"""The ``routing:`` section of a lab file: routing *intent* (who speaks BGP, what the CE advertises
where, which prefixes Azure owns, the hub routing preference, the timers), never routes.

::

    routing:
      preference: ExpressRoute   # hub routing preference: ExpressRoute (default) | VPN | ASPath
      timers: lab                # lab (default: 3/10 s + BFD 300 ms x3) | azure (60/180 s + BFD)
      ce:
        node: ce
        asn: 65001
        expressroute: {advertise: [10.0.0.0/16, 172.24.127.211/32]}
        vpn: {advertise: [10.0.1.0/24], prepend: 0}
        frr_config: my-ce-frr.conf   # optional: the user's own FRR config (relative to the lab file)
      msees: [msee1, msee2]      # AS 12076; their CE/hub links are found from `links:`
      hub: {node: hub, prefixes: [10.51.230.0/24, 10.51.231.0/24]}

The BGP addresses inside each tunnel are ``vpn.connections[].bgp`` (parsed by the topology).
:func:`parse_routing` checks shapes (called by the topology validator); :func:`check_routing` checks
references against the whole topology (called by ``lab check``).  This module imports nothing of the
lab package, so ``topology`` can import it without a cycle.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.config.kit import Doc, FieldPath
from ipsecemu.routing.azure import check_customer_asn
from ipsecemu.routing.intent import ASN_MAX, HubRoutingPreference

TIMER_PROFILES = ("lab", "azure")


@dataclass(frozen=True)
class CeRouting:
    node: str
    asn: int
    er_advertise: tuple[str, ...]
    vpn_advertise: tuple[str, ...]
    vpn_prepend: int = 0
    frr_config: str | None = None  # absolute path of the user's own FRR config


@dataclass(frozen=True)
class Routing:
    preference: HubRoutingPreference
    timers: str  # one of TIMER_PROFILES
    ce: CeRouting
    msees: tuple[str, ...]
    hub: str
    hub_prefixes: tuple[str, ...]


def _prefixes(doc: Doc, v: Any, path: FieldPath) -> tuple[str, ...]:
    out = []
    for i, p in enumerate(doc.list_(v, path)):
        try:
            out.append(str(ipaddress.IPv4Network(p, strict=True)))
        except (ValueError, TypeError):
            raise doc.error((*path, i), f"{p!r} is not an IPv4 prefix with host bits zero "
                                        "(e.g. 10.0.1.0/24)") from None
    return tuple(out)


def parse_routing(doc: Doc, value: Any, lab_file: str, path: FieldPath = ("routing",)) -> Routing:
    """The ``routing:`` mapping -> :class:`Routing`; shape errors carry file:line:field."""
    m = doc.mapping(value, path, "a mapping with 'ce', 'msees' and 'hub'")
    doc.keys(m, path, ("preference", "timers", "ce", "msees", "hub"), ("ce", "msees", "hub"))
    try:
        pref = HubRoutingPreference.parse(doc.str_(m.get("preference", "ExpressRoute"), (*path, "preference")))
    except ConfigError:
        raise doc.error((*path, "preference"), f"{m.get('preference')!r} is not one of ExpressRoute, VPN, "
                                               "ASPath") from None
    timers = m.get("timers", "lab")
    if timers not in TIMER_PROFILES:
        raise doc.error((*path, "timers"), f"{timers!r} is not one of {', '.join(TIMER_PROFILES)}")
    cp = (*path, "ce")
    ce = doc.mapping(m["ce"], cp)
    doc.keys(ce, cp, ("node", "asn", "expressroute", "vpn", "frr_config"), ("node", "asn"))
    asn = doc.int_(ce["asn"], (*cp, "asn"), 1, ASN_MAX)
    try:
        check_customer_asn(asn, "asn")
    except ConfigError as exc:
        raise doc.error((*cp, "asn"), str(exc).split(": ", 1)[-1]) from None
    er = doc.mapping(ce.get("expressroute") or {}, (*cp, "expressroute"))
    doc.keys(er, (*cp, "expressroute"), ("advertise",))
    vpn = doc.mapping(ce.get("vpn") or {}, (*cp, "vpn"))
    doc.keys(vpn, (*cp, "vpn"), ("advertise", "prepend"))
    prepend = doc.int_(vpn["prepend"], (*cp, "vpn", "prepend"), 0, 10) if "prepend" in vpn else 0
    frr_config = None
    if "frr_config" in ce:
        rel = doc.str_(ce["frr_config"], (*cp, "frr_config"))
        base = file_dir(lab_file)
        frr_config = rel if rel.startswith("/") else f"{base}/{rel}"
    msees = doc.list_(m["msees"], (*path, "msees"))
    if not msees:
        raise doc.error((*path, "msees"), "list the MSEE routers (at least one)")
    hp = (*path, "hub")
    hub = doc.mapping(m["hub"], hp)
    doc.keys(hub, hp, ("node", "prefixes"), ("node", "prefixes"))
    return Routing(
        preference=pref, timers=timers,
        ce=CeRouting(doc.str_(ce["node"], (*cp, "node")), asn,
                     _prefixes(doc, er.get("advertise") or [], (*cp, "expressroute", "advertise")),
                     _prefixes(doc, vpn.get("advertise") or [], (*cp, "vpn", "advertise")), prepend, frr_config),
        msees=tuple(doc.str_(x, (*path, "msees", i)) for i, x in enumerate(msees)),
        hub=doc.str_(hub["node"], (*hp, "node")),
        hub_prefixes=_prefixes(doc, hub["prefixes"], (*hp, "prefixes")))


def file_dir(lab_file: str) -> str:
    """The directory of the lab file (relative paths in the lab are relative to it)."""
    head, sep, _ = lab_file.rpartition("/")
    return head if sep else "."


def check_routing(doc: Doc, r: Routing, kinds: dict[str, str], links: list[tuple[str, str, str, str]],
                  addresses: dict[tuple[str, str], list[str]], bgp_conns: list[tuple[int, tuple[str, str]]]) -> None:
    """References: nodes exist with a fitting kind, each MSEE has a link to the CE and to the hub with
    addresses on one subnet, each VPN connection with ``bgp:`` has the CE at one end.

    ``links``: (node a, iface a, node b, iface b); ``addresses``: (node, iface) -> CIDRs;
    ``bgp_conns``: (connection index, its two nodes) of the connections that have ``bgp:``."""
    p: FieldPath = ("routing",)
    for node, path, want in ((r.ce.node, (*p, "ce", "node"), ("ipsecemu", "strongswan", "router")),
                             (r.hub, (*p, "hub", "node"), ("router", "ipsecemu"))):
        if node not in kinds:
            raise doc.error(path, f"unknown node '{node}'")
        if kinds[node] not in want:
            raise doc.error(path, f"node '{node}' is kind '{kinds[node]}'; a routing node is one of "
                                  f"{', '.join(want)}")
    for i, msee in enumerate(r.msees):
        path = (*p, "msees", i)
        if msee not in kinds:
            raise doc.error(path, f"unknown node '{msee}'")
        if kinds[msee] != "router":
            raise doc.error(path, f"MSEE '{msee}' must be kind 'router', not '{kinds[msee]}'")
        for other in (r.ce.node, r.hub):
            if link_addresses(msee, other, links, addresses) is None:
                raise doc.error(path, f"MSEE '{msee}' needs a link to '{other}' with an IPv4 address on one "
                                      "subnet at both ends (links: + addresses:)")
    if not r.ce.er_advertise:
        raise doc.error((*p, "ce", "expressroute", "advertise"), "the CE advertises nothing over ExpressRoute "
                                                                 "(its VPN device address at least)")
    for idx, nodes in bgp_conns:
        if r.ce.node not in nodes:
            raise doc.error(("vpn", "connections", idx, "bgp"),
                            f"BGP inside a tunnel runs between the CE '{r.ce.node}' and a VPN instance; "
                            f"this connection joins {nodes[0]} and {nodes[1]}")


def link_addresses(a: str, b: str, links: list[tuple[str, str, str, str]],
                   addresses: dict[tuple[str, str], list[str]]) -> tuple[str, str] | None:
    """(address of ``a``, address of ``b``) on the first link between them whose ends share an IPv4
    subnet; None when there is none."""
    for na, ia, nb, ib in links:
        if {na, nb} != {a, b}:
            continue
        ia_, ib_ = (ia, ib) if na == a else (ib, ia)
        for ca in addresses.get((a, ia_), []):
            for cb in addresses.get((b, ib_), []):
                x, y = ipaddress.ip_interface(ca), ipaddress.ip_interface(cb)
                if x.version == 4 and x.network == y.network:
                    return str(x.ip), str(y.ip)
    return None
