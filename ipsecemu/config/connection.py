"""Connection configuration: YAML file or plain dict -> frozen, validated dataclasses.

A file holds one connection (its keys at the top level) or several under ``connections:``
(name -> connection).  Key names are case-insensitive and ``-``/``_`` are interchangeable, so
``IkeEncryption``, ``ike-encryption`` and ``ike_encryption`` are the same key.  Errors are
:class:`ConnectionConfigError` naming the field (and, for YAML, ``file:line``) and what is
allowed.  Proposals come either as strongSwan strings (``ike_proposals``/``esp_proposals``) or
as Azure ``ipsec_policy`` names; both become :class:`~ipsecemu.ike.proposals.Proposal` lists.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.satypes import MAX_REPLAY_WINDOW, Lifetime
from ipsecemu.config.azure_policy import AzurePolicy, azure_policy
from ipsecemu.config.fields import (
    ConnectionConfigError,
    Path_,
    _bool,
    _canon,
    _Ctx,
    _int,
    _keyed,
    _str,
    squash,
)
from ipsecemu.config.kit import ConfigFileError, FieldPath, load_yaml, read_text
from ipsecemu.ike.consts import IdType
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.proposals import Proposal, ProposalError, Transform, parse_proposals
from ipsecemu.ike.settings import CHILDLESS, Identity
from ipsecemu.ike.transforms import TransformType
from ipsecemu.ike.ts import TrafficSelector

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class Auth:
    method: str  # "psk" | "cert"
    secret: bytes = field(default=b"", repr=False)  # PSK; never logged
    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        if self.method == "psk":
            return "Auth(method='psk', secret=<hidden>)"
        return f"Auth(method='cert', cert={self.cert!r}, key={self.key!r}, ca={self.ca!r})"


@dataclass(frozen=True)
class SaLifetime:
    """Hard limits (0 = none) plus when to rekey before them.

    Rekey (soft) time = ``seconds - rekey_margin - random(0..jitter)``; the data limits rekey at
    ``100 - rekey_margin_percent`` % of ``kilobytes``/``packets``.
    """

    seconds: int
    kilobytes: int = 0
    packets: int = 0
    rekey_margin: int = 0  # seconds
    jitter: int = 0  # seconds
    rekey_margin_percent: int = 10

    def rekey_seconds(self, random_fraction: float = 0.0) -> float:
        """When to start rekeying; ``random_fraction`` in [0, 1) comes from the caller's RNG."""
        return self.seconds - self.rekey_margin - self.jitter * random_fraction

    def to_dataplane(self) -> Lifetime:
        """Byte/packet limits for :class:`ipsecemu.base.satypes.EspSaConfig`."""
        keep = (100 - self.rekey_margin_percent) / 100
        hard_bytes = self.kilobytes * 1024
        return Lifetime(
            soft_bytes=int(hard_bytes * keep), hard_bytes=hard_bytes,
            soft_packets=int(self.packets * keep), hard_packets=self.packets,
        )


@dataclass(frozen=True)
class Dpd:
    interval: int = 10  # seconds between liveness checks when idle; 0 disables DPD
    timeout: int = 45  # Azure's DPD timeout: declare the peer dead after this long


@dataclass(frozen=True)
class NatT:
    ike_port: int = 500
    natt_port: int = 4500
    force_encap: bool = False  # always float to UDP 4500 (what strongSwan libipsec needs)
    keepalive: int = 20  # seconds between NAT keepalives on UDP 4500 while idle; 0 disables


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    local_address: IpAddress | None  # None = any (responder)
    remote_address: IpAddress | None  # None = any peer (responder only)
    local_id: Identity | None  # None = our address (strongSwan's default)
    remote_id: Identity | None  # None = accept any ID the peer proves
    auth: Auth
    ike_proposals: tuple[Proposal, ...]
    esp_proposals: tuple[Proposal, ...]
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    mode: str = "tunnel"
    ike_lifetime: SaLifetime = SaLifetime(28800, rekey_margin=2880, jitter=1440)
    child_lifetime: SaLifetime = SaLifetime(3600, 102400000, rekey_margin=360, jitter=180)
    dpd: Dpd = Dpd()
    nat_t: NatT = NatT()
    replay_window: int = 128
    start_action: str = "initiate"  # "initiate" | "listen" | "trap" (on demand: the first packet initiates)
    azure_policy: AzurePolicy | None = None
    fragmentation: bool = True  # RFC 7383 IKE fragmentation offered/accepted
    fragment_size: int = 1280  # IP datagram size above which IKE messages are fragmented
    childless: str = "allow"  # RFC 6023, like strongSwan: never | allow | force
    # start_action trap only: what the connection's traffic does while no Child SA exists.
    # "drop" (a host policy's "require"): queued then dropped, never sent in clear, routes stay;
    # "clear" ("request"): after trap_timeout seconds without an SA the routes go (clear traffic)
    trap_fallback: str = "drop"
    trap_timeout: int = 10  # seconds a triggered negotiation may take before the fallback

    @property
    def esn(self) -> bool:
        """True when our first ESP proposal prefers extended sequence numbers."""
        return bool(self.esp_proposals) and self.esp_proposals[0].esn

    def effective_local_id(self) -> Identity | None:
        if self.local_id is not None:
            return self.local_id
        if self.local_address is None:
            return None
        return Identity(IdType.IPV4_ADDR if self.local_address.version == 4 else IdType.IPV6_ADDR,
                        self.local_address.packed)


# ---------------------------------------------------------------- field parsers
def _address(ctx: _Ctx, path: Path_, v: object) -> IpAddress | None:
    s = _str(ctx, path, v).strip()
    if s in ("%any", "any", "0.0.0.0", "::"):
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise ctx.error(path, f"not an IPv4/IPv6 address: {s!r} (use %any for any)") from None


def _identity(ctx: _Ctx, path: Path_, v: object) -> Identity:
    """``local_id``/``remote_id``: a text form of :meth:`Identity.parse` or ``{type, value}``."""
    if isinstance(v, Mapping):
        d = _keyed(ctx, path, v, _canon("type", "value"))
        if "type" not in d or "value" not in d:
            raise ctx.error(path, "needs both type and value")
        kind = _str(ctx, (*path, "type"), d["type"]).lower()
        if kind.replace("-", "_") not in ("fqdn", "ipv4", "ipv6", "rfc822", "email", "keyid", "key_id", "dn"):
            raise ctx.error((*path, "type"),
                            f"must be one of fqdn, ipv4, ipv6, rfc822, key_id, dn; got {d['type']!r}")
        v = f"{kind.replace('-', '_')}:{_str(ctx, (*path, 'value'), d['value'])}"
    try:
        return Identity.parse(_str(ctx, path, v))
    except LocalProtocolError as exc:
        raise ctx.error(path, str(exc)) from None


def _secret(ctx: _Ctx, path: Path_, v: object) -> bytes:
    """A PSK: text, ``0x<hex>`` or ``env:VAR``."""
    s = _str(ctx, path, v)
    if s.startswith("env:"):
        val = os.environ.get(s[4:])
        if val is None:
            raise ctx.error(path, f"environment variable {s[4:]} is not set")
        s = val
    if s.lower().startswith("0x"):
        try:
            return bytes.fromhex(s[2:])
        except ValueError:
            raise ctx.error(path, "0x-prefixed secret is not valid hex") from None
    if not s:
        raise ctx.error(path, "the pre-shared key is empty")
    return s.encode()


def _auth(ctx: _Ctx, path: Path_, v: object) -> Auth:
    d = _keyed(ctx, path, v, _canon("method", "psk", "secret", "cert", "key", "ca"))
    method = squash(d.get("method", "psk" if ("psk" in d or "secret" in d) else "cert"))
    if method == "psk":
        if "psk" in d and "secret" in d:
            raise ctx.error(path, "give the PSK once (psk or secret)")
        if "psk" not in d and "secret" not in d:
            raise ctx.error(path, "method psk needs a secret")
        for k in ("cert", "key", "ca"):
            if k in d:
                raise ctx.error((*path, k), "only valid with method cert")
        key = "psk" if "psk" in d else "secret"
        return Auth("psk", secret=_secret(ctx, (*path, key), d[key]))
    if method in ("cert", "pubkey"):
        for k in ("cert", "key"):
            if k not in d:
                raise ctx.error(path, f"method cert needs {k} (a PEM file path)")
        if "psk" in d or "secret" in d:
            raise ctx.error(path, "method cert takes no PSK")
        return Auth("cert", cert=_str(ctx, (*path, "cert"), d["cert"]), key=_str(ctx, (*path, "key"), d["key"]),
                    ca=_str(ctx, (*path, "ca"), d["ca"]) if "ca" in d else None)
    raise ctx.error((*path, "method"), f"must be psk or cert, got {d['method']!r}")


_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "icmp6": 58, "ipv6-icmp": 58, "sctp": 132, "gre": 47, "any": 0}
_TS_RE = re.compile(r"^\s*([^\[\s]+)\s*(?:\[\s*([^/\]]*)\s*(?:/\s*([^\]]*))?\])?\s*$")


def parse_ts(text: str) -> TrafficSelector:
    """``10.0.0.0/24``, ``10.0.0.0/24[tcp]``, ``10.0.0.0/24[tcp/8080]``, ``[6/1000-2000]``, ``[udp/%any]``."""
    m = _TS_RE.match(text)
    if not m:
        raise ValueError(f"not a traffic selector: {text!r} (CIDR[proto/port])")
    cidr, proto_s, port_s = m.group(1), (m.group(2) or "").strip(), (m.group(3) or "").strip()
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"not a CIDR network: {cidr!r}") from None
    proto = 0
    if proto_s and proto_s != "%any":
        if proto_s.lower() in _PROTO_NAMES:
            proto = _PROTO_NAMES[proto_s.lower()]
        elif proto_s.isdigit() and int(proto_s) < 256:
            proto = int(proto_s)
        else:
            raise ValueError(f"unknown protocol {proto_s!r} (tcp, udp, icmp, icmp6, sctp, gre or 0-255)")
    lo, hi = 0, 65535
    if port_s and port_s != "%any":
        if proto not in (6, 17, 132):
            raise ValueError(f"ports need protocol tcp, udp or sctp, got {proto_s or 'any'!r}")
        a, _, b = port_s.partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            raise ValueError(f"port must be N or N-M, got {port_s!r}")
        lo, hi = int(a), int(b or a)
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"port range must be within 0-65535 and low <= high, got {port_s!r}")
    return TrafficSelector(net[0], net[-1], proto, lo, hi)


def _ts_list(ctx: _Ctx, path: Path_, v: object) -> tuple[TrafficSelector, ...]:
    items = [v] if isinstance(v, str | Mapping) else v
    if not isinstance(items, list) or not items:
        raise ctx.error(path, "must be a non-empty list of CIDR[proto/port] strings")
    out: list[TrafficSelector] = []
    for i, item in enumerate(items):
        p = (*path, i)
        if isinstance(item, Mapping):
            d = _keyed(ctx, p, item, _canon("cidr", "protocol", "ports", subnet="cidr", proto="protocol", port="ports"))
            if "cidr" not in d:
                raise ctx.error(p, "needs cidr")
            text = _str(ctx, p, d["cidr"])
            if "protocol" in d or "ports" in d:
                text += f"[{d.get('protocol', 'any')}/{d.get('ports', '%any')}]"
            item = text
        try:
            out.append(parse_ts(_str(ctx, p, item)))
        except ValueError as exc:
            raise ctx.error(p, str(exc)) from None
    return tuple(out)


def _proposals(ctx: _Ctx, path: Path_, v: object, protocol: str) -> tuple[Proposal, ...]:
    if isinstance(v, list):
        if not v:
            raise ctx.error(path, "empty proposal list")
        v = ",".join(_str(ctx, (*path, i), x) for i, x in enumerate(v))
    try:
        return tuple(parse_proposals(_str(ctx, path, v), protocol))
    except ProposalError as exc:
        raise ctx.error(path, str(exc)) from None


def _lifetime(ctx: _Ctx, path: Path_, v: object, default: SaLifetime) -> SaLifetime:
    if isinstance(v, int) and not isinstance(v, bool):
        v = {"seconds": v}
    d = _keyed(ctx, path, v, _canon("seconds", "kilobytes", "packets", "rekey_margin", "jitter",
                                    "rekey_margin_percent", time="seconds", life_time="seconds",
                                    bytes_kb="kilobytes", margin="rekey_margin", rand_time="jitter"))
    secs = _int(ctx, (*path, "seconds"), d.get("seconds", default.seconds), 1)
    scale = secs / default.seconds  # default margin/jitter keep their proportion
    margin = _int(ctx, (*path, "rekey_margin"), d.get("rekey_margin", int(default.rekey_margin * scale)), 0)
    jitter = _int(ctx, (*path, "jitter"), d.get("jitter", int(default.jitter * scale)), 0)
    if margin + jitter >= secs:
        raise ctx.error(path, f"rekey_margin + jitter ({margin} + {jitter}) must be below seconds ({secs})")
    return SaLifetime(
        secs,
        _int(ctx, (*path, "kilobytes"), d.get("kilobytes", default.kilobytes), 0),
        _int(ctx, (*path, "packets"), d.get("packets", default.packets), 0),
        margin, jitter,
        _int(ctx, (*path, "rekey_margin_percent"), d.get("rekey_margin_percent", default.rekey_margin_percent), 0, 99),
    )


# ---------------------------------------------------------------- connection
_CONN_KEYS = _canon(
    "name", "local_address", "remote_address", "local_id", "remote_id", "auth", "psk",
    "ike_proposals", "esp_proposals", "ipsec_policy", "local_ts", "remote_ts", "mode", "ike_lifetime",
    "child_lifetime", "dpd", "esn", "nat_t", "replay_window", "start_action", "fragmentation", "fragment_size",
    "childless", "trap_fallback", "trap_timeout",
    local_addrs="local_address", remote_addrs="remote_address", local="local_address",
    remote="remote_address", ike="ike_proposals", esp="esp_proposals", proposals="ike_proposals",
    local_traffic_selectors="local_ts", remote_traffic_selectors="remote_ts", policy="ipsec_policy",
    azure_policy="ipsec_policy", rekey="child_lifetime", child="child_lifetime", natt="nat_t",
    replay="replay_window",
)
DEFAULT_IKE = "aes256gcm16-prfsha384-ecp384,aes256-sha256-modp2048"
DEFAULT_ESP = "aes256gcm16,aes256-sha256"


def parse_connection(data: Mapping[str, Any], name: str | None = None, *, _ctx: _Ctx | None = None,
                     _path: Path_ = ()) -> ConnectionConfig:
    """One connection from a dict (the same keys as in YAML)."""
    ctx = _ctx or _Ctx()
    d = _keyed(ctx, _path, data, _CONN_KEYS)

    def p(key: str) -> Path_:
        return (*_path, key)

    name = _str(ctx, p("name"), d["name"]) if "name" in d else (name or "conn")
    local = _address(ctx, p("local_address"), d["local_address"]) if "local_address" in d else None
    if "remote_address" not in d:
        raise ctx.error(_path, "remote_address is required (an IP address, or %any to accept any peer)")
    remote = _address(ctx, p("remote_address"), d["remote_address"])
    if local is not None and remote is not None and local.version != remote.version:
        raise ctx.error(p("remote_address"), f"IPv{remote.version} peer but IPv{local.version} local address")

    if "auth" in d and "psk" in d:
        raise ctx.error(p("psk"), "give either psk or auth, not both")
    if "psk" in d:
        auth = Auth("psk", secret=_secret(ctx, p("psk"), d["psk"]))
    elif "auth" in d:
        auth = _auth(ctx, p("auth"), d["auth"])
    else:
        raise ctx.error(_path, "auth is required: psk: <secret>, or auth: {method: cert, cert: ..., key: ...}")

    policy = None
    if "ipsec_policy" in d:
        for k in ("ike_proposals", "esp_proposals"):
            if k in d:
                raise ctx.error(p(k), "use either ike_proposals/esp_proposals or ipsec_policy, not both")
        policy, ike_l, esp_l = azure_policy(ctx, p("ipsec_policy"), d["ipsec_policy"])
        ike, esp = tuple(ike_l), tuple(esp_l)
    else:
        ike = _proposals(ctx, p("ike_proposals"), d.get("ike_proposals", DEFAULT_IKE), "ike")
        esp = _proposals(ctx, p("esp_proposals"), d.get("esp_proposals", DEFAULT_ESP), "esp")

    if "esn" in d:  # overrides the ESN transforms of every ESP proposal
        want = Transform(TransformType.ESN, 1 if _bool(ctx, p("esn"), d["esn"]) else 0)
        esp = tuple(Proposal("esp", (*(t for t in q.transforms if t.type != TransformType.ESN), want), q.number)
                    for q in esp)

    mode = _str(ctx, p("mode"), d.get("mode", "tunnel")).lower()
    if mode not in ("tunnel", "transport"):
        raise ctx.error(p("mode"), f"must be tunnel or transport, got {mode!r}")
    start = _str(ctx, p("start_action"), d.get("start_action", "initiate")).lower()
    # strongSwan's names: start = initiate, none = listen, trap (ipsec.conf auto=route) = on demand
    start = {"start": "initiate", "none": "listen", "route": "trap"}.get(start, start)
    if start not in START_ACTIONS:
        raise ctx.error(p("start_action"), f"must be initiate, listen or trap, got {d['start_action']!r}")
    if start != "listen" and remote is None:
        raise ctx.error(p("start_action"), f"{start} needs a concrete remote_address (not %any); use listen")
    fallback, trap_timeout = _trap(ctx, _path, d, start)

    child_default = ConnectionConfig.child_lifetime
    if policy is not None:
        secs = policy.sa_lifetime_seconds
        child_default = SaLifetime(secs, policy.sa_datasize_kilobytes, rekey_margin=secs // 10, jitter=secs // 20)
        if "child_lifetime" in d:
            raise ctx.error(p("child_lifetime"), "ipsec_policy already sets sa_lifetime_seconds and "
                                                 "sa_datasize_kilobytes; give them there")
    ike_lt = _lifetime(ctx, p("ike_lifetime"), d.get("ike_lifetime", {}), ConnectionConfig.ike_lifetime)
    child_lt = _lifetime(ctx, p("child_lifetime"), d.get("child_lifetime", {}), child_default)

    dpd = Dpd()
    if "dpd" in d:
        if d["dpd"] is False or d["dpd"] == 0:
            dpd = Dpd(0, 0)
        else:
            dd = _keyed(ctx, p("dpd"), d["dpd"], _canon("interval", "timeout", delay="interval"))
            dpd = Dpd(_int(ctx, (*p("dpd"), "interval"), dd.get("interval", Dpd.interval), 0),
                      _int(ctx, (*p("dpd"), "timeout"), dd.get("timeout", Dpd.timeout), 0))
            if dpd.interval and dpd.timeout < dpd.interval:
                raise ctx.error(p("dpd"), f"timeout ({dpd.timeout}) must be >= interval ({dpd.interval})")
    nat = NatT()
    if "nat_t" in d:
        nd = _keyed(ctx, p("nat_t"), d["nat_t"], _canon("ike_port", "natt_port", "force_encap", "keepalive",
                                                         encap="force_encap", keep_alive="keepalive"))
        nat = NatT(_int(ctx, (*p("nat_t"), "ike_port"), nd.get("ike_port", 500), 1, 65535),
                   _int(ctx, (*p("nat_t"), "natt_port"), nd.get("natt_port", 4500), 1, 65535),
                   _bool(ctx, (*p("nat_t"), "force_encap"), nd.get("force_encap", False)),
                   _int(ctx, (*p("nat_t"), "keepalive"), nd.get("keepalive", NatT.keepalive), 0, 3600))
        if nat.ike_port == nat.natt_port:
            raise ctx.error(p("nat_t"), "ike_port and natt_port must differ")

    local_ts = _ts_list(ctx, p("local_ts"), d.get("local_ts", ["0.0.0.0/0"]))
    remote_ts = _ts_list(ctx, p("remote_ts"), d.get("remote_ts", ["0.0.0.0/0"]))
    if mode == "transport" and ("local_ts" not in d or "remote_ts" not in d):
        # transport mode protects host-to-host traffic: default the selectors to the addresses
        if "local_ts" not in d and local is not None:
            local_ts = (TrafficSelector(local, local),)
        if "remote_ts" not in d and remote is not None:
            remote_ts = (TrafficSelector(remote, remote),)

    return ConnectionConfig(
        name=name, local_address=local, remote_address=remote,
        local_id=_identity(ctx, p("local_id"), d["local_id"]) if "local_id" in d else None,
        remote_id=_identity(ctx, p("remote_id"), d["remote_id"]) if "remote_id" in d else None,
        auth=auth, ike_proposals=ike, esp_proposals=esp, local_ts=local_ts, remote_ts=remote_ts, mode=mode,
        ike_lifetime=ike_lt, child_lifetime=child_lt, dpd=dpd, nat_t=nat,
        replay_window=_int(ctx, p("replay_window"), d.get("replay_window", 128), 0, MAX_REPLAY_WINDOW),
        start_action=start, azure_policy=policy,
        fragmentation=_bool(ctx, p("fragmentation"), d.get("fragmentation", True)),
        fragment_size=_int(ctx, p("fragment_size"), d.get("fragment_size", 1280), 576, 65535),
        childless=_childless(ctx, p("childless"), d.get("childless", "allow")),
        trap_fallback=fallback, trap_timeout=trap_timeout,
    )


START_ACTIONS = ("initiate", "listen", "trap")
TRAP_FALLBACKS = ("drop", "clear")
# a host policy's action words are accepted too: require = drop, request = clear
_FALLBACK_ALIASES = {"require": "drop", "request": "clear"}


def _trap(ctx: _Ctx, path: Path_, d: Mapping[str, Any], start: str) -> tuple[str, int]:
    """``trap_fallback``/``trap_timeout``: only meaningful for ``start_action: trap``."""
    for key in ("trap_fallback", "trap_timeout"):
        if key in d and start != "trap":
            raise ctx.error((*path, key), f"only with start_action: trap (this connection is {start})")
    fallback = _str(ctx, (*path, "trap_fallback"), d.get("trap_fallback", "drop")).lower()
    fallback = _FALLBACK_ALIASES.get(fallback, fallback)
    if fallback not in TRAP_FALLBACKS:
        raise ctx.error((*path, "trap_fallback"), f"must be drop or clear, got {d['trap_fallback']!r}")
    return fallback, _int(ctx, (*path, "trap_timeout"), d.get("trap_timeout", 10), 1, 3600)


def _childless(ctx: _Ctx, path: Path_, v: object) -> str:
    s = _str(ctx, path, v).lower()
    if s not in CHILDLESS:
        raise ctx.error(path, f"must be one of {', '.join(CHILDLESS)}, got {s!r}")
    return s


def parse_config(data: object, *, _ctx: _Ctx | None = None) -> list[ConnectionConfig]:
    """A whole config (dict): ``connections: {name: {...}}`` or a single connection's keys."""
    ctx = _ctx or _Ctx()
    if not isinstance(data, Mapping):
        raise ctx.error((), f"the config must be a mapping, got {type(data).__name__}")
    keys = {squash(k): k for k in data}
    if "connections" in keys:
        if len(keys) > 1:
            extra = sorted(str(k) for s, k in keys.items() if s != "connections")
            raise ctx.error((), f"unknown top-level keys next to connections: {', '.join(extra)}")
        conns = data[keys["connections"]]
        if not isinstance(conns, Mapping) or not conns:
            raise ctx.error(("connections",), "must be a non-empty mapping of name -> connection")
        out = [parse_connection(c, str(n), _ctx=ctx, _path=("connections", str(n))) for n, c in conns.items()]
        return out
    return [parse_connection(data, _ctx=ctx)]


# ---------------------------------------------------------------- YAML with line numbers
def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """YAML text -> (data, line number of every key path), through the config kit: every YAML
    mistake is a :class:`ConnectionConfigError` with ``source:line``."""
    try:
        doc = load_yaml(text, source)
    except ConfigFileError as exc:
        raise ConnectionConfigError(str(exc)) from None
    _no_squashed_duplicates(doc.lines, source)
    return doc.value, doc.lines


def _no_squashed_duplicates(lines: dict[FieldPath, int], source: str) -> None:
    """``psk`` and ``PSK`` (or ``ike-port``/``ike_port``) are one key here: the second is a duplicate."""
    first: dict[FieldPath, tuple[FieldPath, int]] = {}
    for path, line in lines.items():  # file order
        sq = tuple(squash(x) if isinstance(x, str) else x for x in path)
        if sq in first and first[sq][0] != path:
            dotted = ".".join(str(x) for x in path)
            raise ConnectionConfigError(f"{source}:{line}: {dotted}: duplicate key (first at line {first[sq][1]})")
        first.setdefault(sq, (path, line))


def loads(text: str, source: str = "<string>") -> list[ConnectionConfig]:
    """Parse YAML text; errors carry ``source:line``."""
    data, lines = parse_yaml(text, source)
    return parse_config(data, _ctx=_Ctx(source, lines))


def load(path: str | os.PathLike[str]) -> list[ConnectionConfig]:
    """Load a YAML config file."""
    try:
        text = read_text(path)
    except ConfigFileError as exc:
        raise ConnectionConfigError(str(exc)) from None
    return loads(text, str(path))
