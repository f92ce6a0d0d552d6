"""Import the Azure Virtual WAN "VPN device configuration" JSON into connection configs.

The file is a list of sites; each site has ``vpnSiteConfiguration`` (Name, IPAddress, LinkName,
optional BgpSetting) and ``vpnSiteConnections``, each with ``hubConfiguration`` (AddressSpace,
ConnectedSubnets), ``gatewayConfiguration.IpAddresses`` (Instance0, Instance1; optionally
``PrivateIpAddresses`` and ``BgpSetting.BgpPeeringAddresses``) and ``connectionConfiguration``
(IsBgpEnabled, PSK, IPsecParameters).  Every (site, connection, instance) becomes one
:class:`AzureConnection`: Azure's gateway is active-active, so the device runs one tunnel per
instance.  Key names are matched case-insensitively (Azure's casing varies between versions).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.config.connection import ConnectionConfig, parse_connection
from ipsecemu.config.fields import ConnectionConfigError, squash
from ipsecemu.config.kit import ConfigFileError, FieldPath, load_yaml, read_text

INSTANCES = ("Instance0", "Instance1")
APIPA = ipaddress.ip_network("169.254.0.0/16")
# RFC 1918 / RFC 6598 / ULA: what "Use Azure Private IP Address" gives (ipaddress.is_private also
# counts the documentation ranges, which the example file uses as *public* addresses)
PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                       "100.64.0.0/10", "fc00::/7"))


def is_private_address(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in PRIVATE_NETS)


class AzureConfigError(ConfigError):
    """The device configuration JSON is invalid; the message gives the JSON path."""


@dataclass(frozen=True)
class AzureConnection:
    """One tunnel of one site connection to one gateway instance."""

    site: str
    link: str | None
    instance: str  # "Instance0" | "Instance1"
    hub_address_space: str | None
    connected_subnets: tuple[str, ...]
    private_ip: bool  # the tunnel runs to the gateway's private address (VPN over ExpressRoute)
    bgp_enabled: bool
    bgp_peer_address: str | None  # the device's BGP address (inside the tunnel)
    gateway_bgp_address: str | None  # this instance's BGP address
    bgp_asn: int | None  # the gateway's ASN when given
    config: ConnectionConfig

    @property
    def azure_prefixes(self) -> tuple[str, ...]:
        """What the hub advertises to the site: hub space + spokes."""
        return tuple(p for p in (self.hub_address_space, *self.connected_subnets) if p)


def _get(d: Mapping[str, Any], key: str) -> Any:
    want = squash(key)
    for k, v in d.items():
        if squash(k) == want:
            return v
    return None


_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\] ]+)")


class _Walker:
    """Errors name the JSON path and, when the text was read through the config kit, the line."""

    def __init__(self, source: str, lines: Mapping[FieldPath, int] | None = None) -> None:
        self.source = source
        # keys are matched case-insensitively (Azure's casing varies): so are their lines
        self.lines = {tuple(squash(x) if isinstance(x, str) else x for x in p): n for p, n in (lines or {}).items()}

    def line(self, path: str) -> int | None:
        parts: list[str | int] = []
        for m in _PATH_PART.finditer(path.split(" (", 1)[0]):
            parts.append(int(m.group(1)) if m.group(1) is not None else squash(m.group(2)))
        key = tuple(x for x in parts if x != "$")
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key)

    def err(self, path: str, msg: str) -> AzureConfigError:
        line = self.line(path)
        where = f"{self.source}:{line}" if line else self.source
        return AzureConfigError(f"{where}: {path}: {msg}")

    def mapping(self, d: Mapping[str, Any], key: str, path: str, required: bool = True) -> Mapping[str, Any]:
        v = _get(d, key)
        if v is None and not required:
            return {}
        if not isinstance(v, Mapping):
            raise self.err(f"{path}.{key}", "missing" if v is None else f"must be an object, got {type(v).__name__}")
        return v

    def ip(self, d: Mapping[str, Any], key: str, path: str, required: bool = True) -> str | None:
        v = _get(d, key)
        if v is None:
            if required:
                raise self.err(f"{path}.{key}", "missing")
            return None
        try:
            return str(ipaddress.ip_address(str(v).strip()))
        except ValueError:
            raise self.err(f"{path}.{key}", f"not an IP address: {v!r}") from None

    def int_(self, d: Mapping[str, Any], key: str, path: str, default: int) -> int:
        v = _get(d, key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.err(f"{path}.{key}", f"must be a positive integer, got {v!r}")
        return v


def import_device_config(data: object, *, source: str = "<json>", ipsec_policy: Mapping[str, Any] | None = None,
                         use_private_ip: bool | None = None, local_address: str | None = None,
                         lines: Mapping[FieldPath, int] | None = None) -> list[AzureConnection]:
    """Turn the parsed JSON (a list of sites, or one site object) into connections.

    ``ipsec_policy`` applies Azure custom-policy names (as in the connection config) to every
    tunnel; without it the connection-config defaults are used.  ``use_private_ip`` picks
    ``PrivateIpAddresses`` when the file lists both (default: when the connection says
    ``UsePrivateIpAddress``).  ``local_address`` overrides the device address (when the
    device sits behind a CE that owns the site address).  ``lines`` (from the config kit) puts the
    line number in every error.
    """
    w = _Walker(source, lines)
    sites = [data] if isinstance(data, Mapping) else data
    if not isinstance(sites, list) or not sites:
        raise w.err("$", "expected a non-empty list of sites")
    out: list[AzureConnection] = []
    names: set[str] = set()
    for si, site in enumerate(sites):
        sp = f"[{si}]"
        if not isinstance(site, Mapping):
            raise w.err(sp, f"a site must be an object, got {type(site).__name__}")
        sc = w.mapping(site, "vpnSiteConfiguration", sp)
        scp = f"{sp}.vpnSiteConfiguration"
        site_name = _get(sc, "Name")
        if not isinstance(site_name, str) or not site_name.strip():
            raise w.err(f"{scp}.Name", "missing site name")
        device_ip = w.ip(sc, "IPAddress", scp)
        link = _get(sc, "LinkName")
        site_bgp = w.mapping(sc, "BgpSetting", scp, required=False)
        site_bgp_addr = w.ip(site_bgp, "BgpPeeringAddress", f"{scp}.BgpSetting", required=False)
        conns = _get(site, "vpnSiteConnections")
        if not isinstance(conns, list) or not conns:
            raise w.err(f"{sp}.vpnSiteConnections", "expected a non-empty list of connections")
        for ci, conn in enumerate(conns):
            cp = f"{sp}.vpnSiteConnections[{ci}]"
            if not isinstance(conn, Mapping):
                raise w.err(cp, "a connection must be an object")
            hub = w.mapping(conn, "hubConfiguration", cp, required=False)
            hub_space = _get(hub, "AddressSpace")
            subnets = _get(hub, "ConnectedSubnets") or []
            for i, pfx in enumerate([hub_space, *subnets] if hub_space else subnets):
                try:
                    ipaddress.ip_network(str(pfx))
                except ValueError:
                    raise w.err(f"{cp}.hubConfiguration", f"not a CIDR prefix: {pfx!r} (entry {i})") from None
            gw = w.mapping(conn, "gatewayConfiguration", cp)
            gwp = f"{cp}.gatewayConfiguration"
            cc = w.mapping(conn, "connectionConfiguration", cp)
            ccp = f"{cp}.connectionConfiguration"
            psk = _get(cc, "PSK")
            if not isinstance(psk, str) or not psk:
                raise w.err(f"{ccp}.PSK", "missing or empty pre-shared key")
            bgp = _get(cc, "IsBgpEnabled")
            if bgp is None:
                bgp = False
            if not isinstance(bgp, bool):
                raise w.err(f"{ccp}.IsBgpEnabled", f"must be true or false, got {bgp!r}")
            params = w.mapping(cc, "IPsecParameters", ccp, required=False)
            pp = f"{ccp}.IPsecParameters"
            life_s = w.int_(params, "SALifeTimeInSeconds", pp, 3600)
            life_kb = w.int_(params, "SADataSizeInKilobytes", pp, 102400000)

            private = use_private_ip
            if private is None:
                private = bool(_get(cc, "UsePrivateIpAddress"))
            key = "PrivateIpAddresses" if private and _get(gw, "PrivateIpAddresses") is not None else "IpAddresses"
            addrs = w.mapping(gw, key, gwp)
            gw_bgp = w.mapping(w.mapping(gw, "BgpSetting", gwp, required=False), "BgpPeeringAddresses",
                               f"{gwp}.BgpSetting", required=False)
            asn = _get(w.mapping(gw, "BgpSetting", gwp, required=False), "Asn")
            if bgp:
                if site_bgp_addr is None:
                    raise w.err(f"{scp}.BgpSetting.BgpPeeringAddress",
                                "IsBgpEnabled is true but the site has no BGP peering address")
                _check_bgp(w, f"{scp}.BgpSetting.BgpPeeringAddress", site_bgp_addr, device_ip)

            for inst in INSTANCES:
                gw_ip = str(w.ip(addrs, inst, f"{gwp}.{key}"))
                gw_bgp_ip = w.ip(gw_bgp, inst, f"{gwp}.BgpSetting.BgpPeeringAddresses", required=False)
                is_private = is_private_address(gw_ip)
                name = f"{site_name}-{inst.lower()}" if len(conns) == 1 else f"{site_name}-{ci}-{inst.lower()}"
                if name in names:
                    raise w.err(f"{scp}.Name", f"duplicate site name {site_name!r}")
                names.add(name)
                d: dict[str, Any] = {
                    "name": name,
                    "local_address": local_address or device_ip,
                    "remote_address": gw_ip,
                    "remote_id": gw_ip,
                    "psk": psk,
                    # route-based: the selectors are any <-> any, routes pick what enters the tunnel
                    "local_ts": ["0.0.0.0/0"],
                    "remote_ts": ["0.0.0.0/0"],
                }
                if ipsec_policy is not None:
                    d["ipsec_policy"] = {**ipsec_policy, "sa_lifetime_seconds": life_s,
                                         "sa_datasize_kilobytes": life_kb}
                else:
                    d["child_lifetime"] = {"seconds": life_s, "kilobytes": life_kb}
                try:
                    cfg = parse_connection(d)
                except ConnectionConfigError as exc:
                    raise w.err(f"{cp} ({inst})", str(exc)) from None
                out.append(AzureConnection(
                    site=site_name, link=link if isinstance(link, str) else None, instance=inst,
                    hub_address_space=str(hub_space) if hub_space else None,
                    connected_subnets=tuple(str(s) for s in subnets), private_ip=is_private,
                    bgp_enabled=bgp, bgp_peer_address=site_bgp_addr, gateway_bgp_address=gw_bgp_ip,
                    bgp_asn=asn if isinstance(asn, int) else None, config=cfg,
                ))
    return out


def _check_bgp(w: _Walker, path: str, peer: str, device_ip: str | None) -> None:
    ip = ipaddress.ip_address(peer)
    if peer == device_ip:
        raise w.err(path, f"the BGP peer address {peer} must not be the VPN device address")
    if ip in APIPA:
        raise w.err(path, f"the BGP peer address {peer} is APIPA (169.254.x.x), which Virtual WAN does not accept")


def load_device_config(path: str | os.PathLike[str], **kw: Any) -> list[AzureConnection]:
    """Read and import a device configuration JSON file; errors name ``file:line: json.path``."""
    try:
        text = read_text(path)
    except ConfigFileError as exc:
        raise AzureConfigError(str(exc)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AzureConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    try:  # JSON is (nearly always) YAML too: the kit gives the line of every node
        lines = load_yaml(text, str(path)).lines
    except ConfigFileError:
        lines = {}
    return import_device_config(data, source=str(path), lines=lines, **kw)
