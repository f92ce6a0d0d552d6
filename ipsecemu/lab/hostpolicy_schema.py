"""``ipsec_policy:`` on ``kind: host`` nodes (issue 12, scenario S5): the Windows host IPsec policy
model in YAML -- filter list, filter action, security methods, authentication, mode.

::

    ipsec_policy:
      ike: {auth: psk, psk_file: keys/s5.psk, proposals: aes256-sha256-modp2048}
      rules:                               # first match wins (rule order = priority)
        - name: tcp8080
          filter: {src: 10.2.27.0/25, dst: 10.0.1.0/24, protocol: tcp, dst_port: 8080, mirrored: true}
          action: require                  # require | request | permit | block
          methods: [3des-sha1, aes128gcm16]   # ordered ESP transforms
          mode: transport                  # transport | tunnel
          negotiate_at_start: false
          negotiation_timeout: 5           # request: seconds before falling back to clear

``mirrored: true`` (the default) covers a conversation to the port whichever side opens it, both
packet directions: on a host in ``src``, ``from src to dst dport 8080`` and ``sport 8080`` out, the
same back in.  Not mirrored: only the filter's own packets.  The same policy can sit on every member
host (a YAML anchor), as one GPO does: a rule applies where the host has an address in ``src`` or
``dst``.  Shapes are checked here with ``file:line: field:`` errors; references
to the rest of the lab (addresses, peers) in :func:`ipsecemu.lab.hostpolicy_plan.check`.  This
module imports nothing of the lab package, so ``topology`` can import it without a cycle.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecemu.config.kit import Doc, FieldPath
from ipsecemu.ike.proposals import ProposalError, parse_proposals

ACTIONS = ("require", "request", "permit", "block")
NEGOTIATING = ("require", "request")
MODES = ("transport", "tunnel")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "any": 0}
PORTED = (6, 17)  # protocols with ports
_POLICY_KEYS = ("ike", "rules")
_IKE_KEYS = ("auth", "psk", "psk_file", "cert", "key", "ca", "proposals")
_RULE_KEYS = ("name", "filter", "action", "methods", "mode", "negotiate_at_start", "negotiation_timeout")
_FILTER_KEYS = ("src", "dst", "protocol", "src_port", "dst_port", "mirrored")
DEFAULT_IKE_PROPOSALS = "aes256-sha256-modp2048"
DEFAULT_TIMEOUT = 5  # request: seconds of negotiation before the gateway lets the traffic go in clear


@dataclass(frozen=True)
class PolicyIke:
    """Authentication and IKE proposals of one host; the PSK itself never shows in a repr."""

    auth: str  # "psk" | "cert"
    psk: str = field(default="", repr=False)
    cert: str | None = None  # absolute paths (relative ones are taken from the lab file's folder)
    key: str | None = None
    ca: str | None = None
    proposals: str = DEFAULT_IKE_PROPOSALS

    def connection_keys(self) -> dict[str, Any]:
        """The ``ipsecemu.config.connection`` keys of this authentication."""
        auth: dict[str, Any] = {"method": "psk", "psk": self.psk} if self.auth == "psk" else \
            {"method": "cert", "cert": self.cert, "key": self.key, **({"ca": self.ca} if self.ca else {})}
        return {"auth": auth, "ike_proposals": self.proposals}


@dataclass(frozen=True)
class Filter:
    """Packets from ``src`` to ``dst`` (networks), protocol number (0: any), ports (None: any)."""

    src: str
    dst: str
    protocol: int
    src_port: int | None = None
    dst_port: int | None = None
    mirrored: bool = True

    def mirror(self) -> Filter:
        """The mirror image: addresses and ports swapped (the answers, or the peer's side)."""
        return Filter(self.dst, self.src, self.protocol, self.dst_port, self.src_port, self.mirrored)


@dataclass(frozen=True)
class PolicyRule:
    name: str
    filter: Filter
    action: str
    methods: tuple[str, ...] = ()  # ESP proposals, in order of preference
    mode: str = "transport"
    negotiate_at_start: bool = False
    negotiation_timeout: int = DEFAULT_TIMEOUT
    path: FieldPath = ()  # where the rule is in the lab file (errors of cross-node checks)


@dataclass(frozen=True)
class HostPolicy:
    ike: PolicyIke | None  # None: only permit/block rules (nothing to negotiate)
    rules: tuple[PolicyRule, ...]
    path: FieldPath = ()


def parse_policy(doc: Doc, value: Any, path: FieldPath, base_dir: Path) -> HostPolicy:
    """The ``ipsec_policy`` mapping at ``path``; files named in it are relative to ``base_dir``."""
    m = doc.mapping(value, path, "a mapping with 'rules' (and 'ike')")
    doc.keys(m, path, _POLICY_KEYS, ("rules",))
    raw_rules = doc.list_(m["rules"], (*path, "rules"))
    if not raw_rules:
        raise doc.error((*path, "rules"), "list at least one rule")
    rules: list[PolicyRule] = []
    for i, r in enumerate(raw_rules):
        rule = _rule(doc, r, (*path, "rules", i))
        if any(x.name == rule.name for x in rules):
            raise doc.error((*path, "rules", i, "name"), f"duplicate rule name '{rule.name}'")
        rules.append(rule)
    ike = _ike(doc, m["ike"], (*path, "ike"), base_dir) if "ike" in m else None
    if ike is None and any(r.action in NEGOTIATING for r in rules):
        first = next(r for r in rules if r.action in NEGOTIATING)
        raise doc.error(path, f"rule '{first.name}' negotiates ({first.action}): give 'ike' "
                              "(auth psk/psk_file or cert, proposals)")
    return HostPolicy(ike, tuple(rules), path)


def _ike(doc: Doc, v: Any, path: FieldPath, base_dir: Path) -> PolicyIke:
    m = doc.mapping(v, path)
    doc.keys(m, path, _IKE_KEYS)
    auth = doc.str_(m.get("auth", "psk"), (*path, "auth"))
    proposals = doc.str_(m.get("proposals", DEFAULT_IKE_PROPOSALS), (*path, "proposals"))
    try:
        parse_proposals(proposals, "ike")
    except ProposalError as exc:
        raise doc.error((*path, "proposals"), str(exc)) from None
    if auth == "psk":
        for k in ("cert", "key", "ca"):
            if k in m:
                raise doc.error((*path, k), "only with auth: cert")
        if ("psk" in m) == ("psk_file" in m):
            raise doc.error(path, "auth psk needs exactly one of 'psk' (the secret) or 'psk_file' (a file holding it)")
        if "psk" in m:
            return PolicyIke("psk", psk=doc.str_(m["psk"], (*path, "psk")), proposals=proposals)
        f = _file(doc, m["psk_file"], (*path, "psk_file"), base_dir)
        try:
            secret = Path(f).read_text().strip()
        except OSError as exc:
            raise doc.error((*path, "psk_file"), f"cannot read {f}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise doc.error((*path, "psk_file"), f"{f} is not text (write the PSK as one line)") from None
        if not secret:
            raise doc.error((*path, "psk_file"), f"{f} is empty")
        return PolicyIke("psk", psk=secret, proposals=proposals)
    if auth in ("cert", "certs"):
        for k in ("psk", "psk_file"):
            if k in m:
                raise doc.error((*path, k), "only with auth: psk")
        for k in ("cert", "key"):
            if k not in m:
                raise doc.error(path, f"auth cert needs '{k}' (a PEM file)")
        files = {k: _file(doc, m[k], (*path, k), base_dir) for k in ("cert", "key", "ca") if k in m}
        for k, f in files.items():
            if not Path(f).is_file():
                raise doc.error((*path, k), f"no such file: {f}")
        return PolicyIke("cert", cert=files["cert"], key=files["key"], ca=files.get("ca"), proposals=proposals)
    raise doc.error((*path, "auth"), f"must be psk or cert, got {auth!r} (Windows' Kerberos and AuthIP are "
                                     "out of scope: the hosts speak IKEv2)")


def _file(doc: Doc, v: Any, path: FieldPath, base_dir: Path) -> str:
    p = Path(doc.str_(v, path))
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _rule(doc: Doc, v: Any, path: FieldPath) -> PolicyRule:
    m = doc.mapping(v, path)
    doc.keys(m, path, _RULE_KEYS, ("name", "filter", "action"))
    name = doc.str_(m["name"], (*path, "name"))
    if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 24:
        raise doc.error((*path, "name"), f"{name!r}: letters, digits, '-' and '_', at most 24 characters "
                                         "(it names the host's IPsec connections)")
    action = doc.str_(m["action"], (*path, "action"))
    if action not in ACTIONS:
        raise doc.error((*path, "action"), f"must be one of {', '.join(ACTIONS)}, got {action!r}")
    flt = _filter(doc, m["filter"], (*path, "filter"))
    negotiates = action in NEGOTIATING
    for k in ("methods", "mode", "negotiate_at_start", "negotiation_timeout"):
        if k in m and not negotiates:
            raise doc.error((*path, k), f"action {action} negotiates nothing: '{k}' applies to require/request")
    methods: tuple[str, ...] = ()
    if negotiates:
        if "methods" not in m:
            raise doc.error(path, f"action {action} needs 'methods' (ordered ESP transforms, e.g. [3des-sha1, "
                                  "aes128gcm16])")
        lst = doc.list_(m["methods"], (*path, "methods"))
        if not lst:
            raise doc.error((*path, "methods"), "list at least one ESP transform")
        out = []
        for j, x in enumerate(lst):
            s = doc.str_(x, (*path, "methods", j))
            try:
                parse_proposals(s, "esp")
            except ProposalError as exc:
                raise doc.error((*path, "methods", j), str(exc)) from None
            out.append(s)
        methods = tuple(out)
    mode = doc.str_(m.get("mode", "transport"), (*path, "mode"))
    if mode not in MODES:
        raise doc.error((*path, "mode"), f"must be transport or tunnel, got {mode!r}")
    at_start = doc.bool_(m["negotiate_at_start"], (*path, "negotiate_at_start")) if "negotiate_at_start" in m \
        else False
    timeout = DEFAULT_TIMEOUT
    if "negotiation_timeout" in m:
        if action != "request":
            raise doc.error((*path, "negotiation_timeout"), "only for action request (require never falls back "
                                                            "to clear)")
        timeout = doc.int_(m["negotiation_timeout"], (*path, "negotiation_timeout"), 1, 300)
    return PolicyRule(name, flt, action, methods, mode, at_start, timeout, path)


def _filter(doc: Doc, v: Any, path: FieldPath) -> Filter:
    m = doc.mapping(v, path)
    doc.keys(m, path, _FILTER_KEYS, ("src", "dst"))
    nets = []
    for k in ("src", "dst"):
        s = doc.str_(m[k], (*path, k))
        try:
            net = ipaddress.ip_network(s, strict=True)
        except ValueError:
            raise doc.error((*path, k), f"bad network {s!r} (CIDR with no host bits, e.g. 10.0.1.0/24; "
                                        "a single host is a /32)") from None
        if net.version != 4:
            raise doc.error((*path, k), "IPv4 networks only here")
        nets.append(str(net))
    proto_v = m.get("protocol", "any")
    if isinstance(proto_v, int) and not isinstance(proto_v, bool):
        proto = doc.int_(proto_v, (*path, "protocol"), 0, 255)
    else:
        name = doc.str_(proto_v, (*path, "protocol")).lower()
        if name not in PROTOCOLS:
            raise doc.error((*path, "protocol"), f"must be one of {', '.join(PROTOCOLS)} or 0..255, got {name!r}")
        proto = PROTOCOLS[name]
    ports: list[int | None] = []
    for k in ("src_port", "dst_port"):
        if k not in m:
            ports.append(None)
            continue
        if proto not in PORTED:
            raise doc.error((*path, k), "ports need protocol tcp or udp")
        ports.append(doc.int_(m[k], (*path, k), 1, 65535))
    mirrored = doc.bool_(m["mirrored"], (*path, "mirrored")) if "mirrored" in m else True
    if proto in (50, 51):
        raise doc.error((*path, "protocol"), "ESP/AH themselves cannot be a filter: they carry the protected traffic")
    return Filter(nets[0], nets[1], proto, ports[0], ports[1], mirrored)
