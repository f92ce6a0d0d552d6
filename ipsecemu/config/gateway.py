"""The gateway config file (YAML) -> a validated :class:`GatewayConfig`.

Layout::

    node: gw-a                      # required: this gateway's name
    lab: demo                       # optional: state dir defaults to /run/ipsecemu/<lab>/<node>
    state_dir: /run/ipsecemu/x      # optional: overrides the default (so does --state-dir)
    local_addresses: [192.0.2.1]    # IKE addresses; default local_address of every connection
    datapath:
      encapsulation: auto           # auto (UDP 4500 when NAT is seen) | udp (always) | esp (proto 50)
      batch: 32                     # packets per C loop batch (1..256)
    dpd: {interval: 10, timeout: 45}  # default for connections that do not set their own
    sku: VpnGw1                     # optional, emulated Azure SKU: connections beyond its tunnel count
                                    # are refused (logged); the rate cap is the lab's (uplink element)
    connections:
      to-b:                         # any ipsecemu.config.connection connection keys, plus:
        remote_address: 192.0.2.2
        psk: env:PSK
        local_ts: [10.1.0.0/24]
        remote_ts: [10.2.0.0/24]
        close_action: none          # none | restart: re-initiate when the peer deletes the SA
        tunnel:
          name: vti0                # tun device (<= 15 characters)
          address: 169.254.0.1/30   # optional inner address
          routes: [10.2.0.0/24]     # prefixes routed into the tunnel (default: the remote TS;
                                    # external: none, something else routes into the tun)
          mtu: 1400
          table: 100                # optional routing table of those routes (1..2^31, default main);
                                    # steer into it with ip rules (e.g. ipproto tcp dport 8080)
        start_action: trap          # initiate | listen | trap: tun and routes at start, the first
                                    # packet into the tun initiates (queued meanwhile, bounded)
        trap_fallback: drop         # trap: drop (never clear) | clear (routes go after trap_timeout)
        trap_timeout: 10            # trap: seconds a triggered negotiation may take

Errors are :class:`~ipsecemu.config.connection.ConnectionConfigError` with ``file:line: field:``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipsecemu.config import connection as ikecfg
from ipsecemu.config import fields
from ipsecemu.config import sku as skus
from ipsecemu.config.connection import ConnectionConfig
from ipsecemu.config.connection_dump import summary as conn_summary
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.config.fields import ConnectionConfigError
from ipsecemu.config.kit import ConfigFileError, read_text

__all__ = ["GatewayConfig", "GatewayConnection", "TunnelConfig", "load", "loads", "summary", "ConnectionConfigError"]

ENCAPSULATIONS = ("auto", "udp", "esp")
MAX_IFNAME = 15
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TunnelConfig:
    name: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    routes: tuple[Network, ...] = ()  # empty: route the negotiated remote traffic selectors
    mtu: int = 1400
    # `routes: external`: install no routes; something else routes into the tun (a lab's route agent)
    external_routes: bool = False
    table: int | None = None  # routing table of the routes (None: main)


@dataclass(frozen=True)
class GatewayConnection:
    conn: ConnectionConfig
    tunnel: TunnelConfig
    close_action: str = "none"  # "none" | "restart"

    @property
    def name(self) -> str:
        return self.conn.name


@dataclass(frozen=True)
class GatewayConfig:
    node: str
    lab: str | None
    state_dir: Path
    local_addresses: tuple[str, ...]
    encapsulation: str
    batch: int
    connections: tuple[GatewayConnection, ...]
    source: str = "<string>"
    sku: str | None = None  # emulated Azure SKU (ipsecemu.config.sku): caps the number of tunnels

    def connection(self, name: str) -> GatewayConnection | None:
        return next((c for c in self.connections if c.name == name), None)


_TOP = fields._canon("node", "lab", "state_dir", "local_addresses", "datapath", "dpd", "connections", "sku",
                     local_address="local_addresses", local="local_addresses")
_DATAPATH = fields._canon("encapsulation", "batch", encap="encapsulation")
_TUNNEL = fields._canon("name", "address", "routes", "mtu", "table", routing_table="table")
MAX_TABLE = 2 ** 31
MAIN_TABLE, LOCAL_TABLE = 254, 255


def _table(ctx: fields._Ctx, path: fields.Path_, v: object) -> int | None:
    """``table: N`` (1..2^31) or ``main``; the kernel's local table (255) is refused."""
    if isinstance(v, str) and v.strip().lower() == "main":
        return None
    n = fields._int(ctx, path, v, 1, MAX_TABLE)
    if n == LOCAL_TABLE:
        raise ctx.error(path, "255 is the kernel's local table; use another number (or main)")
    return None if n == MAIN_TABLE else n


def _tunnel(ctx: fields._Ctx, path: fields.Path_, v: object, conn_name: str, index: int) -> TunnelConfig:
    d = fields._keyed(ctx, path, v if v is not None else {}, _TUNNEL)
    name = fields._str(ctx, (*path, "name"), d.get("name", f"ipsec{index}"))
    if not 0 < len(name) <= MAX_IFNAME or "/" in name or " " in name:
        raise ctx.error((*path, "name"), f"a link name of 1..{MAX_IFNAME} characters without '/' or spaces, "
                                         f"got {name!r}")
    addr = None
    if d.get("address") is not None:
        try:
            addr = ipaddress.ip_interface(str(d["address"]))
        except ValueError:
            raise ctx.error((*path, "address"), f"an address/prefix like 169.254.0.1/30, got {d['address']!r}") \
                from None
    routes_raw = d.get("routes", [])
    external = routes_raw == "external"
    if external:
        routes_raw = []
    if isinstance(routes_raw, str):
        routes_raw = [routes_raw]
    if not isinstance(routes_raw, list):
        raise ctx.error((*path, "routes"), "a list of prefixes")
    routes = []
    for i, r in enumerate(routes_raw):
        try:
            routes.append(ipaddress.ip_network(str(r), strict=False))
        except ValueError:
            raise ctx.error((*path, "routes", i), f"not a prefix: {r!r}") from None
    mtu = fields._int(ctx, (*path, "mtu"), d.get("mtu", 1400), 576, 9000)
    table = _table(ctx, (*path, "table"), d["table"]) if d.get("table") is not None else None
    if external and table is not None:
        raise ctx.error((*path, "table"), "routes: external installs no routes, so a table has no effect")
    return TunnelConfig(name, addr, tuple(routes), mtu, external, table)


def parse(data: object, *, source: str = "<string>", lines: dict[Any, int] | None = None,
          state_dir: str | None = None) -> GatewayConfig:
    ctx = fields._Ctx(source, lines or {})
    top = fields._keyed(ctx, (), data, _TOP)
    if "node" not in top:
        raise ctx.error((), "node is required (this gateway's name)")
    node = fields._str(ctx, ("node",), top["node"])
    lab = fields._str(ctx, ("lab",), top["lab"]) if top.get("lab") is not None else None
    for what, val in (("node", node), ("lab", lab)):
        if val is not None and ("/" in val or val in (".", "..") or not val):
            raise ctx.error((what,), f"must be a plain name, got {val!r}")
    if state_dir is None:
        state_dir = fields._str(ctx, ("state_dir",), top["state_dir"]) if "state_dir" in top else \
            os.path.join("/run/ipsecemu", lab or "default", node)

    addrs_raw = top.get("local_addresses", [])
    if isinstance(addrs_raw, str):
        addrs_raw = [addrs_raw]
    if not isinstance(addrs_raw, list):
        raise ctx.error(("local_addresses",), "a list of IP addresses")
    addrs: list[str] = []
    for i, a in enumerate(addrs_raw):
        try:
            addrs.append(str(ipaddress.ip_address(str(a))))
        except ValueError:
            raise ctx.error(("local_addresses", i), f"not an IP address: {a!r}") from None

    dp = fields._keyed(ctx, ("datapath",), top.get("datapath") or {}, _DATAPATH)
    encap = fields._str(ctx, ("datapath", "encapsulation"), dp.get("encapsulation", "auto")).lower()
    if encap not in ENCAPSULATIONS:
        raise ctx.error(("datapath", "encapsulation"), f"must be one of {', '.join(ENCAPSULATIONS)}, got {encap!r}")
    batch = fields._int(ctx, ("datapath", "batch"), dp.get("batch", 32), 1, 256)

    conns_raw = top.get("connections")
    if not isinstance(conns_raw, Mapping) or not conns_raw:
        raise ctx.error(("connections",), "must be a non-empty mapping of name -> connection")
    conns: list[GatewayConnection] = []
    tun_names: dict[str, str] = {}
    for index, (name, raw) in enumerate(conns_raw.items()):
        path: fields.Path_ = ("connections", str(name))
        if not isinstance(raw, Mapping):
            raise ctx.error(path, f"must be a mapping, got {type(raw).__name__}")
        d: dict[str, Any] = dict(raw)
        keys = {fields.squash(k): k for k in d}
        tunnel = _tunnel(ctx, (*path, "tunnel"), d.pop(keys["tunnel"]) if "tunnel" in keys else None, str(name),
                         index)
        close = "none"
        if "closeaction" in keys:
            close = fields._str(ctx, (*path, "close_action"), d.pop(keys["closeaction"])).lower()
            if close not in ("none", "restart"):
                raise ctx.error((*path, "close_action"), f"must be none or restart, got {close!r}")
        if "localaddress" not in keys and addrs:
            d["local_address"] = addrs[0]
        if "dpd" not in keys and "dpd" in top:
            d["dpd"] = top["dpd"]
        conn = ikecfg.parse_connection(d, str(name), _ctx=ctx, _path=path)
        if encap == "udp" and not conn.nat_t.force_encap:
            conn = dataclasses.replace(conn, nat_t=dataclasses.replace(conn.nat_t, force_encap=True))
        if conn.local_address is None:
            raise ctx.error(path, "local_address is needed (here or in local_addresses) to bind IKE sockets")
        if tunnel.name in tun_names:
            raise ctx.error((*path, "tunnel", "name"), f"{tunnel.name} is already used by {tun_names[tunnel.name]}")
        tun_names[tunnel.name] = str(name)
        try:
            to_ike_sa_config(conn)  # what the IKE core cannot do is a config error too
        except ConnectionConfigError as exc:
            raise ctx.error(path, str(exc)) from None
        conns.append(GatewayConnection(conn, tunnel, close))
    if not addrs:
        addrs = sorted({str(c.conn.local_address) for c in conns})
    for c in conns:
        if str(c.conn.local_address) not in addrs:
            addrs.append(str(c.conn.local_address))
    sku_name = None
    if top.get("sku") is not None:
        try:
            sku_name = skus.sku(fields._str(ctx, ("sku",), top["sku"])).name
        except ValueError as exc:
            raise ctx.error(("sku",), str(exc)) from None
    return GatewayConfig(node, lab, Path(state_dir), tuple(addrs), encap, batch, tuple(conns), source, sku_name)


def loads(text: str, source: str = "<string>", *, state_dir: str | None = None) -> GatewayConfig:
    data, lines = ikecfg.parse_yaml(text, source)
    return parse(data, source=source, lines=lines, state_dir=state_dir)


def load(path: str | os.PathLike[str], *, state_dir: str | None = None) -> GatewayConfig:
    try:
        text = read_text(path)
    except ConfigFileError as exc:
        raise ConnectionConfigError(str(exc)) from None
    return loads(text, str(path), state_dir=state_dir)


def summary(cfg: GatewayConfig) -> str:
    """``gateway check`` output (no secrets)."""
    out = [f"node {cfg.node}" + (f" (lab {cfg.lab})" if cfg.lab else ""),
           f"  state dir  {cfg.state_dir}",
           f"  IKE on     {', '.join(cfg.local_addresses)}",
           f"  data path  encapsulation {cfg.encapsulation}, batch {cfg.batch}"]
    out.append(conn_summary([c.conn for c in cfg.connections]).rstrip("\n"))
    for c in cfg.connections:
        t = c.tunnel
        routes = "external" if t.external_routes else (", ".join(str(r) for r in t.routes) or "remote traffic selectors")
        out.append(f"{c.name}: tunnel {t.name} mtu {t.mtu}" + (f" address {t.address}" if t.address else "") +
                   f", routes {routes}" + (f" table {t.table}" if t.table else "") +
                   f", close_action {c.close_action}" +
                   (f", trap (fallback {c.conn.trap_fallback} after {c.conn.trap_timeout}s)"
                    if c.conn.start_action == "trap" else ""))
    return "\n".join(out) + "\n"
