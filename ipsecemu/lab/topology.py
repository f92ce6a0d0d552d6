"""Lab topology schema: YAML -> validated frozen dataclasses, before any netlink call.

Errors carry the file, the line (from PyYAML node marks) and the field path, e.g.
``er-vwan.yaml:42: links[3].endpoints[1]: unknown node 'msee3'``.

The ``vpn.connections[*]`` IKE/ESP contents are kept as an opaque read-only mapping; the IKE
config parser (``ipsecemu.config.connection``) interprets them later.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ipsecemu.config import sku as skus
from ipsecemu.config.kit import ConfigFileError, Doc, load_yaml, read_text
from ipsecemu.lab.audit_schema import Audit, parse_audit
from ipsecemu.lab.hostpolicy_schema import HostPolicy, parse_policy
from ipsecemu.lab.impair_schema import Impair, parse_impair
from ipsecemu.lab.routing_schema import Routing, parse_routing

KINDS = ("host", "router", "ipsecemu", "strongswan")
VPN_KINDS = ("ipsecemu", "strongswan")
FORWARDING_KINDS = ("router", "ipsecemu", "strongswan")

# Lab and node names become netns names "<lab>-<node>"; node names have no '-' so
# "<lab>-<node>" can be split back and two labs cannot produce the same netns name by accident.
LAB_NAME_RE = re.compile(r"^(?!.*--)[a-z][a-z0-9-]{0,30}[a-z0-9]$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
IFNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")  # Linux IFNAMSIZ: 15 chars
SYSCTL_RE = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$")


class TopologyError(ConfigFileError):
    """A user mistake in a topology file: one line naming file, line and field."""


# ---------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Endpoint:
    node: str
    iface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.iface}"


@dataclass(frozen=True)
class NextHop:
    via: str | None = None
    dev: str | None = None
    weight: int = 1


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR or "default"
    nexthops: tuple[NextHop, ...]  # one for a plain route, several for ECMP
    table: int | None = None
    metric: int | None = None
    src: str | None = None

    @property
    def multipath(self) -> bool:
        return len(self.nexthops) > 1


@dataclass(frozen=True)
class Rule:
    table: int
    src: str | None = None
    dst: str | None = None
    iif: str | None = None
    priority: int | None = None


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    addresses: tuple[tuple[str, str], ...] = ()  # (iface, "a.b.c.d/len")
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    ipv6: bool = False
    sku: str | None = None  # Azure VPN gateway SKU emulated on a VPN node (ipsecemu.config.sku)
    ipsec_policy: HostPolicy | None = None  # host IPsec policy (S5, ipsecemu.lab.hostpolicy_schema)
    http: tuple[int, ...] = ()  # ports of the HTTP servers a host runs (ipsecemu.lab.hostpolicy_svc)

    def addresses_on(self, iface: str) -> list[str]:
        return [a for i, a in self.addresses if i == iface]


@dataclass(frozen=True)
class Link:
    """A veth pair between two endpoints (both may be on one node)."""

    a: Endpoint
    b: Endpoint
    mtu: int | None = None
    # A MACsec-protected link (scenario S4): the raw mapping under ``macsec:``, validated and run
    # by ipsecemu.lab.svc_macsec.  The node's L3 interface is then a tap named after the endpoint;
    # the veth underneath carries the protected frames and is named by ``phy_ifname``.
    macsec: Mapping[str, Any] | None = None
    # An impaired link (ipsecemu.lab.impair_schema): the two ends meet in a helper netns where the
    # impairment element (native/src/impair.c) forwards between them; ``impair: {}`` = none yet.
    impair: Impair | None = None


def sku_uplinks(node: Node, vpn: tuple[VpnConnection, ...]) -> list[str]:
    """The interfaces of ``node`` holding one of its IKE addresses (what a SKU cap applies to)."""
    ike = {c.addresses[i] for c in vpn for i in (0, 1) if c.nodes[i] == node.name}
    return sorted({i for i, cidr in node.addresses if str(ipaddress.ip_interface(cidr).ip) in ike})


def phy_ifname(iface: str) -> str:
    """Name of the veth end under a MACsec link's tap ``iface`` (15-character limit)."""
    return iface[:11] + "_phy"


@dataclass(frozen=True)
class Segment:
    """A shared L2 segment: a bridge with one veth port per member."""

    name: str
    members: tuple[Endpoint, ...]
    mtu: int | None = None


@dataclass(frozen=True)
class VpnConnection:
    """A route-based IPsec connection between two VPN nodes; ``nodes[0]`` initiates.

    ``config`` is opaque here: ``ipsecemu.config.connection`` keys shared by both sides (psk,
    ipsec_policy or proposals, lifetimes...).  :meth:`side_config` adds what differs per side.
    """

    name: str
    nodes: tuple[str, str]
    addresses: tuple[str, str]  # IKE endpoint address of nodes[0], nodes[1]
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (node, prefixes it sends into the tunnel)
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tables: tuple[tuple[str, int], ...] = ()  # (node, routing table for its tunnel routes); default main
    bgp: tuple[tuple[str, str], ...] = ()  # (node, its BGP address inside this tunnel); empty: no BGP

    def bgp_of(self, node: str) -> str | None:
        return next((a for n, a in self.bgp if n == node), None)

    def table_of(self, node: str) -> int:
        return next((t for n, t in self.tables if n == node), 254)

    def side_config(self, node: str) -> dict[str, Any]:
        """The connection as seen from ``node``: a dict for ``ipsecemu.config.connection.parse_connection``."""
        i = self.nodes.index(node)
        return {**self.config, "name": self.name, "local_address": self.addresses[i],
                "remote_address": self.addresses[1 - i], "start_action": "initiate" if i == 0 else "listen"}

    def routes_of(self, node: str) -> tuple[str, ...]:
        return next((r for n, r in self.routes if n == node), ())


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...] = ()
    segments: tuple[Segment, ...] = ()
    vpn: tuple[VpnConnection, ...] = ()
    source: str = "<string>"
    audit: Audit | None = None  # what `lab audit` checks (ipsecemu.lab.audit_schema)
    routing: Routing | None = None  # BGP intent (ipsecemu.lab.routing_schema); None: static routes only

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def netns(self, node: str) -> str:
        return f"{self.name}-{node}"

    def segment_netns(self, segment: str) -> str:
        return f"{self.name}--{segment}"

    def impair_netns(self, link_index: int) -> str:
        """The helper netns of impaired ``links[link_index]`` ('-' is not allowed in segment names)."""
        return f"{self.name}--imp-{link_index}"

    def renamed(self, name: str) -> Topology:
        """The same lab under another name (tests, a second copy of a lab)."""
        if not LAB_NAME_RE.match(name):
            raise TopologyError(self.source, None, "name", f"invalid lab name {name!r} ({_LAB_NAME_HELP})")
        return replace(self, name=name)


_LAB_NAME_HELP = "lowercase letters, digits and single '-', 2-32 chars, starting with a letter"


# ---------------------------------------------------------------- parser/validator


def load(path: str | Path, name: str | None = None) -> Topology:
    """Parse and validate a topology file; ``name`` overrides the lab name."""
    topo = loads(_read(path), str(path))
    return topo.renamed(name) if name else topo


def _read(path: str | Path) -> str:
    try:
        return read_text(path)
    except ConfigFileError as exc:  # the same error, under the topology family
        raise TopologyError(exc.file, exc.line, exc.field, exc.message) from None


def loads(text: str, file: str = "<string>") -> Topology:
    return validate(_doc(text, file))


def _doc(text: str, file: str) -> Doc:
    try:
        return load_yaml(text, file)
    except ConfigFileError as exc:
        raise TopologyError(exc.file, exc.line, exc.field, exc.message) from None


def validate(doc: Doc) -> Topology:
    """The topology of an already loaded document (``lab check`` reuses the document's lines)."""
    try:
        return _Validator(doc).topology()
    except ConfigFileError as exc:
        if isinstance(exc, TopologyError):
            raise
        raise TopologyError(exc.file, exc.line, exc.field, exc.message) from None


class _Validator:
    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.ifaces: dict[str, dict[str, tuple[Any, ...]]] = {}  # node -> iface -> path where declared
        self.addr_paths: dict[str, tuple[Any, ...]] = {}  # ip -> path where first assigned

    # -- the kit's typed readers, each raising a located error
    def _mapping(self, v: Any, path: tuple[Any, ...], what: str = "a mapping") -> dict[str, Any]:
        return self.doc.mapping(v, path, what)

    def _list(self, v: Any, path: tuple[Any, ...]) -> list[Any]:
        return self.doc.list_(v, path)

    def _str(self, v: Any, path: tuple[Any, ...]) -> str:
        return self.doc.str_(v, path)

    def _int(self, v: Any, path: tuple[Any, ...], lo: int, hi: int) -> int:
        return self.doc.int_(v, path, lo, hi)

    def _keys(self, m: dict[str, Any], path: tuple[Any, ...], allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        self.doc.keys(m, path, allowed, required)

    def _cidr(self, v: Any, path: tuple[Any, ...], allow_default: bool = False) -> str:
        if allow_default and v == "default":
            return "default"
        if not isinstance(v, str) or "/" not in v:
            raise self.doc.error(path, f"bad CIDR {v!r} (expected address/prefix, e.g. 10.0.1.10/24)")
        try:
            return str(ipaddress.ip_interface(v))
        except ValueError:
            raise self.doc.error(path, f"bad CIDR {v!r}") from None

    def _net(self, v: Any, path: tuple[Any, ...]) -> str:
        cidr = self._cidr(v, path)
        try:
            return str(ipaddress.ip_network(cidr, strict=True))
        except ValueError:
            raise self.doc.error(path, f"{v!r} has host bits set (did you mean {ipaddress.ip_interface(cidr).network}?)") from None

    def _ip(self, v: Any, path: tuple[Any, ...]) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise self.doc.error(path, f"bad IP address {v!r}") from None

    def _endpoint(self, v: Any, path: tuple[Any, ...], nodes: dict[str, Any]) -> Endpoint:
        if not isinstance(v, str) or v.count(":") != 1:
            raise self.doc.error(path, f"expected 'node:iface', got {v!r}")
        node, iface = v.split(":")
        if node not in nodes:
            raise self.doc.error(path, f"unknown node '{node}'")
        if not IFNAME_RE.match(iface) or iface == "lo":
            raise self.doc.error(path, f"bad interface name '{iface}' (letters, digits, _.-; max 15 chars)")
        seen = self.ifaces.setdefault(node, {})
        if iface in seen:
            raise self.doc.error(path, f"interface '{v}' is already used at line {self.doc.line(seen[iface])}")
        seen[iface] = path
        return Endpoint(node, iface)

    # -- sections
    def topology(self) -> Topology:
        top = self._mapping(self.doc.value, (), "a mapping with 'name' and 'nodes'")
        self._keys(top, (), ("name", "nodes", "links", "segments", "vpn", "audit", "routing"),
                   ("name", "nodes"))
        name = top["name"]
        if not isinstance(name, str) or not LAB_NAME_RE.match(name):
            raise self.doc.error(("name",), f"invalid lab name {name!r} ({_LAB_NAME_HELP})")
        raw_nodes = self._mapping(top["nodes"], ("nodes",))
        if not raw_nodes:
            raise self.doc.error(("nodes",), "a lab needs at least one node")
        for n in raw_nodes:
            if not isinstance(n, str) or not NODE_NAME_RE.match(n):
                raise self.doc.error(("nodes", n), f"invalid node name {n!r} (lowercase letters, digits, _; no '-')")
        links = tuple(self._link(v, ("links", i), raw_nodes)
                      for i, v in enumerate(self._list(top.get("links") or [], ("links",))))
        segments = self._segments(top.get("segments") or [], raw_nodes)
        nodes = tuple(self._node(n, v, ("nodes", n)) for n, v in raw_nodes.items())
        vpn = self._vpn(top.get("vpn"), {n.name: n for n in nodes})
        self._sku_uplinks(nodes, links, vpn)
        audit = parse_audit(self.doc, top["audit"]) if "audit" in top else None
        routing = parse_routing(self.doc, top["routing"], self.doc.file) if "routing" in top else None
        return Topology(name=name, nodes=nodes, links=links, segments=segments, vpn=vpn, source=self.doc.file,
                        audit=audit, routing=routing)

    def _link(self, v: Any, path: tuple[Any, ...], nodes: dict[str, Any]) -> Link:
        m = self._mapping(v, path)
        self._keys(m, path, ("endpoints", "mtu", "macsec", "impair"), ("endpoints",))
        eps = self._list(m["endpoints"], path + ("endpoints",))
        if len(eps) != 2:
            raise self.doc.error(path + ("endpoints",), "a link has exactly two endpoints (use segments: for more)")
        a = self._endpoint(eps[0], path + ("endpoints", 0), nodes)
        b = self._endpoint(eps[1], path + ("endpoints", 1), nodes)
        mtu = self._int(m["mtu"], path + ("mtu",), 68, 65535) if "mtu" in m else None
        macsec = None
        if "macsec" in m:
            macsec = MappingProxyType(dict(self._mapping(m["macsec"] or {}, path + ("macsec",))))
        impair = parse_impair(self.doc, m["impair"], path + ("impair",)) if "impair" in m else None
        if impair is not None and macsec is not None:
            raise self.doc.error(path + ("impair",), "impair on a macsec link is not supported (impair the link "
                                 "that carries it, or a plain link)")
        return Link(a, b, mtu, macsec, impair)

    def _segments(self, v: Any, nodes: dict[str, Any]) -> tuple[Segment, ...]:
        out: list[Segment] = []
        names: set[str] = set()
        for i, s in enumerate(self._list(v, ("segments",))):
            path = ("segments", i)
            m = self._mapping(s, path)
            self._keys(m, path, ("name", "members", "mtu"), ("name", "members"))
            sname = m["name"]
            if not isinstance(sname, str) or not NODE_NAME_RE.match(sname):
                raise self.doc.error(path + ("name",), f"invalid segment name {sname!r}")
            if sname in names:
                raise self.doc.error(path + ("name",), f"duplicate segment name '{sname}'")
            names.add(sname)
            members = self._list(m["members"], path + ("members",))
            if len(members) < 2:
                raise self.doc.error(path + ("members",), "a segment needs at least two members")
            eps = tuple(self._endpoint(e, path + ("members", j), nodes) for j, e in enumerate(members))
            mtu = self._int(m["mtu"], path + ("mtu",), 68, 65535) if "mtu" in m else None
            out.append(Segment(sname, eps, mtu))
        return tuple(out)

    def _node(self, name: str, v: Any, path: tuple[Any, ...]) -> Node:
        m = self._mapping(v if v is not None else {}, path)
        self._keys(m, path, ("kind", "addresses", "routes", "rules", "sysctls", "ipv6", "sku", "ipsec_policy", "http"),
                   ("kind",))
        kind = m["kind"]
        if kind not in KINDS:
            raise self.doc.error(path + ("kind",), f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
        sku_name = None
        if "sku" in m:
            if kind not in VPN_KINDS:
                raise self.doc.error(path + ("sku",), f"only VPN nodes ({', '.join(VPN_KINDS)}) have a SKU")
            try:
                sku_name = skus.sku(str(m["sku"])).name
            except ValueError as exc:
                raise self.doc.error(path + ("sku",), str(exc)) from None
        ipv6 = m.get("ipv6", False)
        if not isinstance(ipv6, bool):
            raise self.doc.error(path + ("ipv6",), "must be true or false")
        ifaces = set(self.ifaces.get(name, {})) | {"lo"}
        addrs: list[tuple[str, str]] = []
        raw_addrs = self._mapping(m.get("addresses") or {}, path + ("addresses",), "a mapping iface -> [CIDR, ...]")
        for iface, lst in raw_addrs.items():
            ipath = path + ("addresses", iface)
            if iface not in ifaces:
                raise self.doc.error(ipath, f"node '{name}' has no interface '{iface}' (declare it in links/segments, or use lo)")
            for j, a in enumerate(lst if isinstance(lst, list) else [lst]):
                apath = ipath + (j,) if isinstance(lst, list) else ipath
                cidr = self._cidr(a, apath)
                if ipaddress.ip_interface(cidr).version == 6 and not ipv6:
                    raise self.doc.error(apath, "IPv6 address on a node without 'ipv6: true'")
                self._claim_address(cidr, apath)
                addrs.append((iface, cidr))
        routes = tuple(self._route(r, path + ("routes", i), ifaces)
                       for i, r in enumerate(self._list(m.get("routes") or [], path + ("routes",))))
        rules = tuple(self._rule(r, path + ("rules", i), ifaces)
                      for i, r in enumerate(self._list(m.get("rules") or [], path + ("rules",))))
        sysctls: list[tuple[str, str]] = []
        for k, val in self._mapping(m.get("sysctls") or {}, path + ("sysctls",)).items():
            kpath = path + ("sysctls", k)
            if not isinstance(k, str) or not SYSCTL_RE.match(k):
                raise self.doc.error(kpath, f"bad sysctl name {k!r} (e.g. net.ipv4.ip_forward)")
            if isinstance(val, bool):
                val = int(val)
            if not isinstance(val, int | str):
                raise self.doc.error(kpath, "sysctl value must be a number or a string")
            sysctls.append((k, str(val)))
        policy, http = self._host_extras(m, path, kind)
        return Node(name, kind, tuple(addrs), routes, rules, tuple(sysctls), ipv6, sku_name, policy, http)

    def _host_extras(self, m: dict[str, Any], path: tuple[Any, ...], kind: str) -> tuple[HostPolicy | None, tuple[int, ...]]:
        """``ipsec_policy`` and ``http`` of a host node (S5)."""
        for k in ("ipsec_policy", "http"):
            if k in m and kind != "host":
                raise self.doc.error(path + (k,), f"only host nodes have '{k}' (this node is kind '{kind}')")
        policy = None
        if "ipsec_policy" in m:
            base = Path(self.doc.file).resolve().parent if self.doc.file and not self.doc.file.startswith("<") \
                else Path.cwd()
            policy = parse_policy(self.doc, m["ipsec_policy"], path + ("ipsec_policy",), base)
        ports: list[int] = []
        for j, p in enumerate(self._list(m.get("http") or [], path + ("http",))):
            port = self._int(p, path + ("http", j), 1, 65535)
            if port in ports:
                raise self.doc.error(path + ("http", j), f"port {port} is listed twice")
            ports.append(port)
        return policy, tuple(ports)

    def _sku_uplinks(self, nodes: tuple[Node, ...], links: tuple[Link, ...], vpn: tuple[VpnConnection, ...]) -> None:
        """A SKU caps the gateway's uplink (the link holding its IKE address): it must be a link."""
        for n in nodes:
            if n.sku is None:
                continue
            ends = {(ep.node, ep.iface) for lk in links for ep in (lk.a, lk.b)}
            for iface in sku_uplinks(n, vpn):
                if (n.name, iface) not in ends:
                    raise self.doc.error(("nodes", n.name, "sku"), f"the SKU's rate cap goes on the link of the IKE "
                                         f"address, but {n.name}:{iface} is not a links: endpoint")
            if not sku_uplinks(n, vpn):
                raise self.doc.error(("nodes", n.name, "sku"), f"node '{n.name}' has no VPN connection to cap")

    def _table(self, v: Any, path: tuple[Any, ...]) -> int:
        if v == "main":
            return 254
        return self._int(v, path, 1, 2**32 - 2)

    def _nexthop(self, m: dict[str, Any], path: tuple[Any, ...], ifaces: set[str]) -> NextHop:
        via = self._ip(m["via"], path + ("via",)) if "via" in m else None
        dev = m.get("dev")
        if dev is not None and not isinstance(dev, str):
            raise self.doc.error(path + ("dev",), "must be an interface name")
        if dev is not None and dev not in ifaces:
            raise self.doc.error(path + ("dev",), f"unknown interface '{dev}' on this node")
        if via is None and dev is None:
            raise self.doc.error(path, "a route needs 'via' and/or 'dev' (or 'nexthops')")
        weight = self._int(m["weight"], path + ("weight",), 1, 256) if "weight" in m else 1
        return NextHop(via, dev, weight)

    def _route(self, v: Any, path: tuple[Any, ...], ifaces: set[str]) -> Route:
        m = self._mapping(v, path)
        self._keys(m, path, ("dst", "via", "dev", "nexthops", "table", "metric", "src"), ("dst",))
        dst = self._cidr(m["dst"], path + ("dst",), allow_default=True)
        if dst != "default":
            dst = self._net(m["dst"], path + ("dst",))
        if "nexthops" in m:
            if "via" in m or "dev" in m:
                raise self.doc.error(path + ("nexthops",), "use either via/dev or nexthops, not both")
            hops = self._list(m["nexthops"], path + ("nexthops",))
            if not hops:
                raise self.doc.error(path + ("nexthops",), "needs at least one next hop")
            nhs = []
            for i, h in enumerate(hops):
                hp = path + ("nexthops", i)
                hm = self._mapping(h, hp)
                self._keys(hm, hp, ("via", "dev", "weight"))
                nhs.append(self._nexthop(hm, hp, ifaces))
            nexthops = tuple(nhs)
        else:
            nexthops = (self._nexthop({k: m[k] for k in ("via", "dev") if k in m}, path, ifaces),)
        table = self._table(m["table"], path + ("table",)) if "table" in m else None
        metric = self._int(m["metric"], path + ("metric",), 0, 2**32 - 1) if "metric" in m else None
        src = self._ip(m["src"], path + ("src",)) if "src" in m else None
        return Route(dst, nexthops, table, metric, src)

    def _rule(self, v: Any, path: tuple[Any, ...], ifaces: set[str]) -> Rule:
        m = self._mapping(v, path)
        self._keys(m, path, ("from", "to", "iif", "table", "priority"), ("table",))
        src = self._net(m["from"], path + ("from",)) if "from" in m else None
        dst = self._net(m["to"], path + ("to",)) if "to" in m else None
        iif = m.get("iif")
        if iif is not None and not isinstance(iif, str):
            raise self.doc.error(path + ("iif",), "must be an interface name")
        if iif is not None and iif not in ifaces:
            raise self.doc.error(path + ("iif",), f"unknown interface '{iif}' on this node")
        prio = self._int(m["priority"], path + ("priority",), 1, 32765) if "priority" in m else None
        return Rule(self._table(m["table"], path + ("table",)), src, dst, iif, prio)

    def _claim_address(self, cidr: str, path: tuple[Any, ...]) -> None:
        ip = str(ipaddress.ip_interface(cidr).ip)
        if ip in self.addr_paths:
            raise self.doc.error(path, f"duplicate address {ip} (also at line {self.doc.line(self.addr_paths[ip])})")
        self.addr_paths[ip] = path

    def _vpn(self, v: Any, nodes: dict[str, Node]) -> tuple[VpnConnection, ...]:
        if v is None:
            return ()
        m = self._mapping(v, ("vpn",))
        self._keys(m, ("vpn",), ("connections",))
        out: list[VpnConnection] = []
        names: set[str] = set()
        for i, c in enumerate(self._list(m.get("connections") or [], ("vpn", "connections"))):
            path = ("vpn", "connections", i)
            cm = self._mapping(c, path)
            self._keys(cm, path, ("name", "nodes", "addresses", "routes", "table", "config", "bgp"),
                       ("name", "nodes", "addresses"))
            cname = self._str(cm["name"], path + ("name",))
            if cname in names:
                raise self.doc.error(path + ("name",), f"duplicate connection name '{cname}'")
            names.add(cname)
            ns = self._list(cm["nodes"], path + ("nodes",))
            if len(ns) != 2 or ns[0] == ns[1]:
                raise self.doc.error(path + ("nodes",), "a connection joins exactly two different nodes")
            for j, n in enumerate(ns):
                if not isinstance(n, str) or n not in nodes:
                    raise self.doc.error(path + ("nodes", j), f"unknown node '{n}'")
                if nodes[n].kind not in VPN_KINDS:
                    raise self.doc.error(path + ("nodes", j),
                                         f"node '{n}' is kind '{nodes[n].kind}', VPN needs one of: {', '.join(VPN_KINDS)}")
            addrs = self._list(cm["addresses"], path + ("addresses",))
            if len(addrs) != 2:
                raise self.doc.error(path + ("addresses",), "one IKE address per node, in the order of 'nodes'")
            ips = []
            for j, a in enumerate(addrs):
                ip = self._ip(a, path + ("addresses", j))
                own = {str(ipaddress.ip_interface(x).ip) for _, x in nodes[ns[j]].addresses}
                if ip not in own:
                    raise self.doc.error(path + ("addresses", j), f"{ip} is not an address of node '{ns[j]}'")
                ips.append(ip)
            routes: list[tuple[str, tuple[str, ...]]] = []
            rm = self._mapping(cm.get("routes") or {}, path + ("routes",), "a mapping node -> [prefix, ...]")
            for n, lst in rm.items():
                if n not in ns:
                    raise self.doc.error(path + ("routes", n), f"'{n}' is not one of this connection's nodes")
                nets = tuple(self._net(r, path + ("routes", n, j))
                             for j, r in enumerate(self._list(lst, path + ("routes", n))))
                routes.append((n, nets))
            tables: list[tuple[str, int]] = []
            tm = self._mapping(cm.get("table") or {}, path + ("table",), "a mapping node -> routing table")
            for n, tv in tm.items():
                if n not in ns:
                    raise self.doc.error(path + ("table", n), f"'{n}' is not one of this connection's nodes")
                tables.append((n, self._table(tv, path + ("table", n))))
            config = self._mapping(cm.get("config") or {}, path + ("config",))
            bgp = self._bgp(cm["bgp"], path + ("bgp",), ns, ips) if "bgp" in cm else ()
            out.append(VpnConnection(cname, (ns[0], ns[1]), (ips[0], ips[1]), tuple(routes),
                                     MappingProxyType(config), tuple(tables), bgp))
        return tuple(out)

    def _bgp(self, v: Any, path: tuple[Any, ...], nodes: list[str], ike: list[str]) -> tuple[tuple[str, str], ...]:
        """``bgp: {node: address, ...}``: each end's BGP address inside the tunnel (IPv4, not its IKE
        address: BGP rides in ESP, never next to it)."""
        m = self._mapping(v, path, "a mapping node -> BGP address inside the tunnel")
        if set(m) != set(nodes):
            raise self.doc.error(path, f"give the BGP address of both ends ({nodes[0]}, {nodes[1]})")
        out = []
        for n in nodes:
            ip = self._ip(m[n], path + (n,))
            if ipaddress.ip_address(ip).version != 4:
                raise self.doc.error(path + (n,), "BGP addresses are IPv4 here")
            if ip in ike:
                raise self.doc.error(path + (n,), f"{ip} is an IKE address: the BGP address inside the tunnel "
                                                  "must differ from the VPN device address")
            out.append((n, ip))
        if out[0][1] == out[1][1]:
            raise self.doc.error(path, "both ends have the same BGP address")
        return tuple(out)
