"""``lab check``: validate everything ``lab up`` will use, before any netlink call.

The topology (nodes, links, segments, routes, rules), both sides of every VPN connection (proposals,
Azure policy names, PSK references, IDs, certificates: what the IKE core will be given), every MACsec
link's settings, and the gateway config each ipsecemu node will run.  Every mistake is a
:class:`~ipsecemu.lab.topology.TopologyError` naming the user's lab file, line and field -- never a
generated ``gateway.yaml`` -- so ``lab up`` (which calls :func:`check_file` first) fails in
milliseconds with nothing built.
"""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.config import gateway as gwconfig
from ipsecemu.config.connection import parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.config.fields import ConnectionConfigError, _Ctx
from ipsecemu.config.kit import ConfigFileError, Doc, FieldPath, fmt_path
from ipsecemu.config.macsec_link import parse_link_config
from ipsecemu.lab import hostpolicy_plan
from ipsecemu.lab.audit_schema import check_audit
from ipsecemu.lab.plan import vpn as planvpn
from ipsecemu.lab.routing_schema import check_routing
from ipsecemu.lab.topology import Topology, TopologyError, _doc, _read, validate
from ipsecemu.routing.frr import check_config

# What ``lab up`` would fill in for a MACsec link without keys (a throw-away pair, see svc_macsec)
_PLACEHOLDER_KEYS = {"cak": "00" * 32, "ckn": "00" * 16}


def check_file(path: str | Path, name: str | None = None) -> Topology:
    """Load and check a lab file; the validated topology (renamed to ``name`` if given)."""
    topo = check_text(_read(path), str(path))
    return topo.renamed(name) if name else topo


def check_text(text: str, file: str = "<string>") -> Topology:
    doc = _doc(text, file)
    topo = validate(doc)
    try:
        _check_vpn(topo, doc)
        _check_tun_names(topo, doc)
        _check_macsec(topo, doc)
        if topo.audit is not None:
            check_audit(doc, topo.audit, *_audit_refs(topo))
        _check_routing(topo, doc)
        _check_host_policies(topo, doc)
    except ConfigFileError as exc:
        if isinstance(exc, TopologyError):
            raise
        raise TopologyError(exc.file, exc.line, exc.field, exc.message) from None
    return topo


def _audit_refs(topo: Topology) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """node -> its IPs, node -> its link/segment interfaces (what audit flows and captures may name)."""
    addrs = {n.name: tuple(str(ipaddress.ip_interface(a).ip) for _i, a in n.addresses) for n in topo.nodes}
    ifaces: dict[str, list[str]] = {n.name: [] for n in topo.nodes}
    for lk in topo.links:
        for ep in (lk.a, lk.b):
            ifaces[ep.node].append(ep.iface)
    for seg in topo.segments:
        for ep in seg.members:
            ifaces[ep.node].append(ep.iface)
    return addrs, {n: tuple(v) for n, v in ifaces.items()}


def _located(doc: Doc, path: FieldPath, exc: ConfigError) -> TopologyError:
    """An error without a location (the IKE core's, a generated config's) placed at ``path``."""
    return TopologyError(doc.file, doc.line(path) or 1, fmt_path(path), str(exc))


def _check_vpn(topo: Topology, doc: Doc) -> None:
    for i, conn in enumerate(topo.vpn):
        base: FieldPath = ("vpn", "connections", i, "config")
        for node in conn.nodes:
            ctx = _Ctx(doc.file, doc.lines, base=base)
            try:
                cfg = parse_connection(conn.side_config(node), conn.name, _ctx=ctx)
            except ConnectionConfigError as exc:  # located in the lab file through ctx
                raise TopologyError(doc.file, exc.line or doc.line(base) or 1, exc.field, exc.message) from None
            try:
                to_ike_sa_config(cfg)  # what the IKE core itself refuses (IDs, certificates)
            except ConfigError as exc:
                raise _located(doc, base, exc) from None
    for nd in topo.nodes:
        if nd.kind != "ipsecemu" or not planvpn.node_conns(topo, nd.name):
            continue
        try:  # the config 'gateway run' will read, with the lab's own names in any error
            gwconfig.parse(planvpn.gateway_config(topo, nd.name, Path("/nonexistent")),
                           source=f"gateway config of node '{nd.name}'")
        except ConfigError as exc:
            raise _located(doc, ("nodes", nd.name), exc) from None


def _check_tun_names(topo: Topology, doc: Doc) -> None:
    """No link or segment interface may take the name of a tun `lab up` creates on the same node
    (the gateway would refuse to start, or charon's libipsec would fail, long after the check)."""
    tuns: dict[tuple[str, str], str] = {}  # (node, dev) -> the first connection using it
    for c in topo.vpn:
        for node in c.nodes:
            tuns.setdefault((node, planvpn.tunnel_name(topo, node, c)), c.name)
    ends: list[tuple[FieldPath, Any]] = [(("links", i, "endpoints", j), ep)
                                        for i, lk in enumerate(topo.links) for j, ep in enumerate((lk.a, lk.b))]
    ends += [(("segments", i, "members", j), ep) for i, s in enumerate(topo.segments) for j, ep in enumerate(s.members)]
    for path, ep in ends:
        conn = tuns.get((ep.node, ep.iface))
        if conn is None:
            continue
        if topo.node(ep.node).kind == "strongswan":
            what = f"charon's tun for all its SAs (kernel-libipsec), used by VPN connection '{conn}'"
        else:
            what = f"the tun of VPN connection '{conn}'"
        raise doc.error(path, f"interface '{ep}' has the name of {what} on node '{ep.node}'; "
                              f"rename the interface")


def _check_host_policies(topo: Topology, doc: Doc) -> None:
    """S5 host policies against the lab, then each policy host's gateway config as 'gateway run' reads it."""
    hostpolicy_plan.check(doc, topo)
    for nd in hostpolicy_plan.policy_hosts(topo):
        if not hostpolicy_plan.connections(topo, nd):
            continue
        try:
            gwconfig.parse(hostpolicy_plan.gateway_config(topo, nd, Path("/nonexistent")),
                           source=f"host IPsec gateway config of node '{nd.name}'")
        except ConfigError as exc:
            raise _located(doc, ("nodes", nd.name, "ipsec_policy"), exc) from None


def _check_macsec(topo: Topology, doc: Doc) -> None:
    for i, link in enumerate(topo.links):
        if link.macsec is None:
            continue
        raw = dict(link.macsec)
        if "cak" not in raw and "ckn" not in raw:
            raw.update(_PLACEHOLDER_KEYS)
        parse_link_config(raw, f"links[{i}].macsec", doc=doc, path=("links", i, "macsec"))


def _check_routing(topo: Topology, doc: Doc) -> None:
    """The ``routing:`` intent against the topology, and a user's own CE FRR config through FRR's parser."""
    r = topo.routing
    bgp = [(i, c.nodes) for i, c in enumerate(topo.vpn) if c.bgp]
    if r is None:
        if bgp:
            raise doc.error(("vpn", "connections", bgp[0][0], "bgp"), "BGP inside a tunnel needs a 'routing:' "
                                                                      "section (who the CE, MSEEs and hub are)")
        return
    links = [(lk.a.node, lk.a.iface, lk.b.node, lk.b.iface) for lk in topo.links]
    for s in topo.segments:
        links += [(a.node, a.iface, b.node, b.iface) for i, a in enumerate(s.members) for b in s.members[i + 1:]]
    addrs: dict[tuple[str, str], list[str]] = {}
    for n in topo.nodes:
        for iface, cidr in n.addresses:
            addrs.setdefault((n.name, iface), []).append(cidr)
    check_routing(doc, r, {n.name: n.kind for n in topo.nodes}, links, addrs, bgp)
    for i, c in enumerate(topo.vpn):
        if not c.bgp:
            continue
        for node in c.nodes:
            # a strongSwan CE works (narrowed CHILD_SA per tunnel, plan.vpn.charon_conn); an instance
            # is Azure's side, emulated by ipsecemu only
            if topo.node(node).kind == "strongswan" and node != r.ce.node:
                raise doc.error(("vpn", "connections", i, "bgp"), f"BGP inside the tunnel on strongSwan node "
                                                                  f"'{node}': only the CE may be strongSwan")
            if node != r.ce.node and not any(
                    {a.node, b.node} == {node, r.hub} for a, b in _pairs(topo)):
                raise doc.error(("vpn", "connections", i, "nodes"), f"VPN instance '{node}' needs a link or "
                                                                    f"segment to the hub router '{r.hub}' (iBGP)")
    if r.ce.frr_config is not None:
        _check_user_frr(doc, r.ce.frr_config)


def _pairs(topo: Topology) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = [(lk.a, lk.b) for lk in topo.links]
    for s in topo.segments:
        out += [(a, b) for i, a in enumerate(s.members) for b in s.members[i + 1:]]
    return out


def _check_user_frr(doc: Doc, path: str) -> None:
    where: FieldPath = ("routing", "ce", "frr_config")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise doc.error(where, f"cannot read the CE's FRR config {path}: {exc.strerror}") from None
    if shutil.which("vtysh") is None:
        return  # FRR not installed: `lab up` says so; nothing to check the syntax with
    with tempfile.TemporaryDirectory(prefix="ipsecemu-frrcheck-") as tmp:
        try:
            check_config(text, Path(tmp))
        except ConfigError as exc:
            msg = str(exc).split("FRR refuses the config: ", 1)[-1].replace("\n", " ")
            raise doc.error(where, f"FRR (vtysh --dryrun) refuses {path}: {' '.join(msg.split())[:300]}") from None
