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
from ipsecemu.config.azure_policy import vwan_default_proposals
from ipsecemu.config.connection import ConnectionConfig, parse_connection
from ipsecemu.config.fields import ConnectionConfigError, squash
from ipsecemu.config.kit import ConfigFileError, FieldPath, load_yaml, read_text

INSTANCES = ("Instance0", "Instance1")
APIPA = ipaddress.ip_network("169.254.0.0/16")
# custom APIPA BGP addresses Azure accepts: 169.254.21.0-169.254.22.255 (not one aligned prefix)
AZURE_APIPA_BGP = (ipaddress.ip_network("169.254.21.0/24"), ipaddress.ip_network("169.254.22.0/24"))
AZURE_RESERVED_ASNS = range(65515, 65521)  # Azure's own (65515) and reserved ASNs
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
    site_address: str = ""  # the site's IPAddress in the file (its IKE identity)
    site_asn: int | None = None  # vpnSiteConfiguration.BgpSetting.Asn
    connection_index: int = 0  # which vpnSiteConnections entry
    custom_policy: bool = False  # a custom IPsec/IKE policy (else Azure's default proposals)

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

    def bool_(self, d: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        v = _get(d, key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.err(f"{path}.{key}", f"must be true or false, got {v!r}")
        return v

    def opt_str(self, d: Mapping[str, Any], key: str, path: str) -> str | None:
        v = _get(d, key)
        if v is not None and not isinstance(v, str):
            raise self.err(f"{path}.{key}", f"must be a string, got {v!r}")
        return v

    def prefix(self, d: Mapping[str, Any], key: str, path: str, what: str | None = None) -> str | None:
        v = _get(d, key)
        if v is None:
            return None
        try:
            return str(ipaddress.ip_network(str(v).strip()))
        except ValueError:
            raise self.err(what or f"{path}.{key}", f"not a CIDR prefix (with host bits zero): {v!r}") from None

    def prefixes(self, d: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        v = _get(d, key)
        if v is None:
            return ()
        if not isinstance(v, list):
            raise self.err(f"{path}.{key}", f"must be a list of CIDR prefixes, got {type(v).__name__}")
        out = []
        for i, x in enumerate(v):
            if x is None:
                raise self.err(f"{path}.{key}[{i}]", "must be a CIDR prefix, got null")
            out.append(str(self.prefix({key: x}, key, path, f"{path}.{key}[{i}]")))
        return tuple(out)

    def asn(self, d: Mapping[str, Any], key: str, path: str, *, customer: bool) -> int | None:
        v = _get(d, key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4294967295:
            raise self.err(f"{path}.{key}", f"must be an AS number (1-4294967295), got {v!r}")
        if customer and v in AZURE_RESERVED_ASNS:
            raise self.err(f"{path}.{key}", f"AS {v} is reserved by Azure (65515-65520) and cannot be the site's "
                                            "ASN; use a private ASN such as 64512-65514 or 65521-65534")
        return v

    def int_(self, d: Mapping[str, Any], key: str, path: str, default: int) -> int:
        v = _get(d, key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.err(f"{path}.{key}", f"must be a positive integer, got {v!r}")
        return v


def import_device_config(data: object, *, source: str = "<json>", ipsec_policy: Mapping[str, Any] | None = None,
                         use_private_ip: bool | None = None, local_address: str | None = None,
                         lines: Mapping[FieldPath, int] | None = None, site: str | None = None) -> list[AzureConnection]:
    """Turn the parsed JSON (a list of sites, or one site object) into connections.

    ``ipsec_policy`` applies Azure custom-policy names (as in the connection config) to every
    tunnel; without it a custom policy in ``IPsecParameters`` is used, and without that Azure's
    documented default proposals (``azure_policy.vwan_default_proposals``).  ``use_private_ip``
    True insists on the instances' private addresses (``PrivateIpAddresses``, or ``IpAddresses``
    when those are private already) and is an error for a site that only has public ones; None
    follows the connection's ``UsePrivateIpAddress``.  ``local_address`` overrides the device
    address (a device behind a CE that owns the site address); the IKE identity stays the site
    address Azure knows.  ``site`` keeps one site (by name).  ``lines`` (from the config kit) puts
    the line number in every error.
    """
    w = _Walker(source, lines)
    sites = [data] if isinstance(data, Mapping) else data
    if not isinstance(sites, list) or not sites:
        raise w.err("$", "expected a non-empty list of sites")
    if local_address is not None:
        try:
            local_address = str(ipaddress.ip_address(local_address.strip()))
        except ValueError:
            raise AzureConfigError(f"--local-address: not an IP address: {local_address!r}") from None
    out: list[AzureConnection] = []
    names: set[str] = set()
    site_names: list[str] = []
    for si, site_d in enumerate(sites):
        sp = f"[{si}]"
        if not isinstance(site_d, Mapping):
            raise w.err(sp, f"a site must be an object, got {type(site_d).__name__}")
        sc = w.mapping(site_d, "vpnSiteConfiguration", sp)
        scp = f"{sp}.vpnSiteConfiguration"
        site_name = _get(sc, "Name")
        if not isinstance(site_name, str) or not site_name.strip():
            raise w.err(f"{scp}.Name", "missing site name")
        site_names.append(site_name)
        if site is not None and site_name != site:
            continue
        device_ip = str(w.ip(sc, "IPAddress", scp))
        link = w.opt_str(sc, "LinkName", scp)
        site_bgp = w.mapping(sc, "BgpSetting", scp, required=False)
        site_bgp_addr = w.ip(site_bgp, "BgpPeeringAddress", f"{scp}.BgpSetting", required=False)
        site_asn = w.asn(site_bgp, "Asn", f"{scp}.BgpSetting", customer=True)
        conns = _get(site_d, "vpnSiteConnections")
        if not isinstance(conns, list) or not conns:
            raise w.err(f"{sp}.vpnSiteConnections", "expected a non-empty list of connections")
        for ci, conn in enumerate(conns):
            cp = f"{sp}.vpnSiteConnections[{ci}]"
            if not isinstance(conn, Mapping):
                raise w.err(cp, "a connection must be an object")
            hub = w.mapping(conn, "hubConfiguration", cp, required=False)
            hp = f"{cp}.hubConfiguration"
            hub_space = w.prefix(hub, "AddressSpace", hp)
            subnets = w.prefixes(hub, "ConnectedSubnets", hp)
            gw = w.mapping(conn, "gatewayConfiguration", cp)
            gwp = f"{cp}.gatewayConfiguration"
            cc = w.mapping(conn, "connectionConfiguration", cp)
            ccp = f"{cp}.connectionConfiguration"
            psk = _get(cc, "PSK")
            if not isinstance(psk, str) or not psk:
                raise w.err(f"{ccp}.PSK", "missing or empty pre-shared key")
            bgp = w.bool_(cc, "IsBgpEnabled", ccp, False)
            params = w.mapping(cc, "IPsecParameters", ccp, required=False)
            pp = f"{ccp}.IPsecParameters"
            life_s = w.int_(params, "SALifeTimeInSeconds", pp, 3600)
            life_kb = w.int_(params, "SADataSizeInKilobytes", pp, 102400000)
            policy = ipsec_policy if ipsec_policy is not None else _custom_policy(w, params, pp)

            file_private = w.bool_(cc, "UsePrivateIpAddress", ccp, None)
            private = use_private_ip if use_private_ip is not None else bool(file_private)
            why = (f"{ccp}.UsePrivateIpAddress" if use_private_ip is None
                   else "--private-ip" if use_private_ip else "--public-ip")
            key, addrs = _instance_addresses(w, gw, gwp, private, why=why)
            gw_bgp_setting = w.mapping(gw, "BgpSetting", gwp, required=False)
            gw_bgp = w.mapping(gw_bgp_setting, "BgpPeeringAddresses", f"{gwp}.BgpSetting", required=False)
            asn = w.asn(gw_bgp_setting, "Asn", f"{gwp}.BgpSetting", customer=False)
            if bgp:
                if site_bgp_addr is None:
                    raise w.err(f"{scp}.BgpSetting.BgpPeeringAddress",
                                "IsBgpEnabled is true but the site has no BGP peering address")
                _check_bgp(w, f"{scp}.BgpSetting.BgpPeeringAddress", site_bgp_addr, device_ip)
                if not gw_bgp:
                    raise w.err(f"{gwp}.BgpSetting.BgpPeeringAddresses",
                                "IsBgpEnabled is true but the gateway gives no BGP peering addresses")

            for inst in INSTANCES:
                gw_ip = str(addrs[inst])
                gw_bgp_ip = w.ip(gw_bgp, inst, f"{gwp}.BgpSetting.BgpPeeringAddresses", required=bgp)
                if gw_bgp_ip is not None:
                    _check_gateway_bgp(w, f"{gwp}.BgpSetting.BgpPeeringAddresses.{inst}", gw_bgp_ip)
                name = f"{site_name}-{inst.lower()}" if len(conns) == 1 else f"{site_name}-{ci}-{inst.lower()}"
                if name in names:
                    raise w.err(f"{scp}.Name", f"duplicate site name {site_name!r}")
                names.add(name)
                d: dict[str, Any] = {
                    "name": name,
                    "local_address": local_address or device_ip,
                    "remote_address": gw_ip,
                    # each side's own identity: Azure knows the site by its IPAddress (even when the
                    # device sits behind a CE, --local-address), the instance by its tunnel address
                    "local_id": device_ip,
                    "remote_id": gw_ip,
                    "psk": psk,
                    # route-based: the selectors are any <-> any, routes pick what enters the tunnel
                    "local_ts": ["0.0.0.0/0"],
                    "remote_ts": ["0.0.0.0/0"],
                }
                if policy is not None:
                    d["ipsec_policy"] = {**policy, "sa_lifetime_seconds": life_s, "sa_datasize_kilobytes": life_kb}
                else:
                    ike, esp = vwan_default_proposals("initiator")
                    d["ike_proposals"], d["esp_proposals"] = ",".join(ike), ",".join(esp)
                    d["child_lifetime"] = {"seconds": life_s, "kilobytes": life_kb}
                try:
                    cfg = parse_connection(d)
                except ConnectionConfigError as exc:
                    raise w.err(f"{cp} ({inst})", str(exc)) from None
                out.append(AzureConnection(
                    site=site_name, link=link, instance=inst, hub_address_space=hub_space,
                    connected_subnets=subnets, private_ip=is_private_address(gw_ip),
                    bgp_enabled=bgp, bgp_peer_address=site_bgp_addr, gateway_bgp_address=gw_bgp_ip,
                    bgp_asn=asn, config=cfg, site_address=device_ip, site_asn=site_asn,
                    connection_index=ci, custom_policy=policy is not None,
                ))
    if site is not None and site not in site_names:
        raise AzureConfigError(f"{source}: --site {site!r}: no such site; the file has: {', '.join(site_names)}")
    return out


_POLICY_KEYS = ("IkeEncryption", "IkeIntegrity", "DhGroup", "IpsecEncryption", "IpsecIntegrity", "PfsGroup")


def _custom_policy(w: _Walker, params: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """A custom IPsec/IKE policy given in IPsecParameters with Azure's ARM names (all six or none)."""
    given = {k: _get(params, k) for k in _POLICY_KEYS}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise w.err(f"{path}.{missing[0]}", f"a custom policy needs all six of {', '.join(_POLICY_KEYS)}; "
                                            f"missing {', '.join(missing)}")
    return {squash(k): v for k, v in given.items()}


def _instance_addresses(w: _Walker, gw: Mapping[str, Any], gwp: str, private: bool,
                        why: str) -> tuple[str, dict[str, str]]:
    """(block name, {Instance0: ip, Instance1: ip}) of the addresses the tunnels run to.

    With ``private`` the private addresses are required: the ``PrivateIpAddresses`` block, or an
    ``IpAddresses`` block that is private already (files downloaded with "Use Azure Private IP
    Address" on).  A site that only has public addresses is an error, never a silent fallback.
    """
    has_private_block = _get(gw, "PrivateIpAddresses") is not None
    key = "PrivateIpAddresses" if private and has_private_block else "IpAddresses"
    block = w.mapping(gw, key, gwp)
    addrs = {inst: str(w.ip(block, inst, f"{gwp}.{key}")) for inst in INSTANCES}
    kinds = {inst: is_private_address(a) for inst, a in addrs.items()}
    if len(set(kinds.values())) > 1:
        raise w.err(f"{gwp}.{key}", "one instance address is private and the other public "
                                    f"({', '.join(f'{i} {a}' for i, a in addrs.items())}); both must be the same kind")
    if private is False and why == "--public-ip" and all(kinds.values()):
        raise w.err(f"{gwp}.{key}", f"--public-ip asks for the instances' public addresses, but this connection "
                                    f"only has private ones ({', '.join(addrs.values())}); import without "
                                    "--public-ip (VPN over ExpressRoute)")
    if private and not all(kinds.values()):
        raise w.err(f"{gwp}.{key}", f"{why} asks for the instances' private addresses, but this connection only "
                                    f"has public ones ({', '.join(addrs.values())}) and no PrivateIpAddresses; "
                                    "enable 'Use Azure Private IP Address' and download the file again, or "
                                    "import without --private-ip (tunnels over the internet)")
    return key, addrs


def _check_gateway_bgp(w: _Walker, path: str, addr: str) -> None:
    ip = ipaddress.ip_address(addr)
    if ip in APIPA and not any(ip in n for n in AZURE_APIPA_BGP):
        raise w.err(path, f"custom APIPA BGP address {addr} is outside 169.254.21.0-169.254.22.255, the range "
                          "Azure accepts")


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
