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
from pathlib import Path

from ipsecemu.base.errors import ConfigError
from ipsecemu.config import gateway as gwconfig
from ipsecemu.config.connection import parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.config.fields import ConnectionConfigError, _Ctx
from ipsecemu.config.kit import ConfigFileError, Doc, FieldPath, fmt_path
from ipsecemu.config.macsec_link import parse_link_config
from ipsecemu.lab.audit_schema import check_audit
from ipsecemu.lab.plan import vpn as planvpn
from ipsecemu.lab.topology import Topology, TopologyError, _doc, _read, validate

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
        _check_macsec(topo, doc)
        if topo.audit is not None:
            check_audit(doc, topo.audit, *_audit_refs(topo))
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


def _check_macsec(topo: Topology, doc: Doc) -> None:
    for i, link in enumerate(topo.links):
        if link.macsec is None:
            continue
        raw = dict(link.macsec)
        if "cak" not in raw and "ckn" not in raw:
            raw.update(_PLACEHOLDER_KEYS)
        parse_link_config(raw, f"links[{i}].macsec", doc=doc, path=("links", i, "macsec"))
