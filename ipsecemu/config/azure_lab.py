"""A runnable lab from one site of an Azure Virtual WAN VPN device configuration.

The lab has the shape of ``netns-labs/er-vwan.yaml`` (scenario S1: VPN over ExpressRoute private
peering): on-prem hosts behind a CE that is the site's VPN device, two MSEEs, the hub router, the two
VPN gateway instances on the hub segment and one spoke host per connected subnet.  Everything Azure
told us comes from the file: the site address (the CE's VPN address), the hub AddressSpace and
ConnectedSubnets (the Azure-side prefixes), the instances' addresses, the BGP ASNs and peering
addresses, the PSK (as an environment reference unless asked) and the IPsecParameters lifetimes.
What the file does not say (the on-prem prefixes, the transit links) comes from options or from a
free range, and the lab file says so in its header.

Two forms: ``routing:`` intent (BGP over ER and inside the tunnels; the lab generates FRR) or, with
``static``, the static routes that lab files used before the BGP labs.  Pure: dicts and text, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ipsecemu.config.azure import AzureConfigError, AzureConnection

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_VPN_PREFIXES = ("10.0.1.0/24",)  # S1: the VPN carries the more specific /24 ...
DEFAULT_ER_PREFIXES = ("10.0.0.0/16",)  # ... ExpressRoute the /16 (Microsoft's vpn-over-expressroute example)
DEFAULT_SITE_ASN = 65010  # a customer private ASN, used when the file has no site BgpSetting
PSK_ENV = "IPSECEMU_PSK"
# transit /30s for CE-MSEE and MSEE-hub links: the first of these /24s that overlaps nothing in the file
_TRANSIT_POOL = ("192.168.100.0/24", "192.168.200.0/24", "172.31.254.0/24", "100.127.254.0/24")
_DPD = {"interval": 10, "timeout": 45}  # Azure's documented DPD timeout (45 s)


@dataclass(frozen=True)
class LabOptions:
    static: bool = False  # static routes instead of the routing: intent
    vpn_prefixes: tuple[str, ...] = DEFAULT_VPN_PREFIXES  # what the CE sends over the VPN
    er_prefixes: tuple[str, ...] = DEFAULT_ER_PREFIXES  # what the CE advertises over ExpressRoute
    show_psk: bool = False
    name: str | None = None  # lab name (default: from the site name)
    preference: str = "ExpressRoute"  # hub routing preference (routing: form)


def _net(s: str, what: str) -> Net:
    try:
        return ipaddress.ip_network(s.strip())
    except ValueError:
        raise AzureConfigError(f"{what}: not a CIDR prefix (with host bits zero): {s!r}") from None


def _lab_name(site: str) -> str:
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", site.lower())).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[:24].rstrip("-")
    return f"az-{slug}" if slug else "az-site"


def _host(net: Net, offset: int, avoid: set[str]) -> str:
    """Address ``offset`` of ``net`` (or the next free one) that is not in ``avoid``."""
    hosts = list(net.hosts()) if net.num_addresses <= 65536 else None
    cand = [net.network_address + offset + i for i in range(64)]
    for ip in cand:
        if ip in net and ip != net.broadcast_address and str(ip) not in avoid and (hosts is None or ip in hosts):
            return str(ip)
    raise AzureConfigError(f"no free address in {net} for the lab")


def _transit(used: Sequence[Net]) -> list[ipaddress.IPv4Network]:
    for block in _TRANSIT_POOL:
        b = ipaddress.IPv4Network(block)
        if not any(b.overlaps(u) for u in used if u.version == 4):
            return list(b.subnets(new_prefix=30))
    raise AzureConfigError(f"every transit range ({', '.join(_TRANSIT_POOL)}) overlaps the file's prefixes")


def _ecmp(*vias: str) -> list[dict[str, str]]:
    return [{"via": v} for v in vias]


def site_connections(conns: Sequence[AzureConnection], source: str, site: str | None) -> list[AzureConnection]:
    """The two tunnels (Instance0, Instance1) of the one site and hub connection the lab is for."""
    names = list(dict.fromkeys(c.site for c in conns))
    if site is None and len(names) > 1:
        kinds = ", ".join(f"{n} ({'private' if all(c.private_ip for c in conns if c.site == n) else 'public'} "
                          "instance addresses)" for n in names)
        raise AzureConfigError(f"{source}: the file has {len(names)} sites ({kinds}); a lab is built for one: "
                               "pick it with --site NAME")
    chosen = [c for c in conns if c.site == (site or names[0])]
    if len({c.connection_index for c in chosen}) > 1:
        raise AzureConfigError(f"{source}: site {chosen[0].site!r} has {len({c.connection_index for c in chosen})} "
                               "hub connections; the lab models one hub (edit the file down to one)")
    return chosen


def build_lab(conns: Sequence[AzureConnection], source: str, opts: LabOptions) -> dict[str, Any]:
    """The lab topology (a dict in the lab YAML schema) for one site's two tunnels."""
    if len(conns) != 2 or {c.instance for c in conns} != {"Instance0", "Instance1"}:
        raise AzureConfigError(f"{source}: a lab needs the site's two tunnels (Instance0 and Instance1)")
    c0, c1 = sorted(conns, key=lambda c: c.instance)
    site, where = c0.site, f"{source}: site {c0.site!r}"
    if not (c0.private_ip and c1.private_ip):
        raise AzureConfigError(
            f"{where} connects to public instance addresses ({c0.config.remote_address}, {c1.config.remote_address}): "
            "the lab models VPN over ExpressRoute private peering, which needs the instances' private addresses "
            "('Use Azure Private IP Address'; --private-ip with a PrivateIpAddresses block)")
    if c0.hub_address_space is None:
        raise AzureConfigError(f"{where}: hubConfiguration.AddressSpace is missing; the lab puts the hub and the "
                               "gateway instances in it")
    hub_net = _net(c0.hub_address_space, f"{where}: hubConfiguration.AddressSpace")
    spokes = [_net(s, f"{where}: hubConfiguration.ConnectedSubnets") for s in c0.connected_subnets]
    for i, n in enumerate([hub_net, *spokes]):
        what = "AddressSpace" if i == 0 else f"ConnectedSubnets[{i - 1}]"
        if n.version != 4 or n.prefixlen > 29:
            raise AzureConfigError(f"{where}: hubConfiguration.{what} {n}: the lab needs an IPv4 prefix of /29 or "
                                   "larger (router .1, host .4)")
        for prev in [hub_net, *spokes][:i]:
            if n.overlaps(prev):
                raise AzureConfigError(f"{where}: hubConfiguration.{what} {n} overlaps {prev}; the lab gives each "
                                       "Azure prefix its own network")
    gw_ips = [str(c0.config.remote_address), str(c1.config.remote_address)]
    for inst, ip in zip(("Instance0", "Instance1"), gw_ips, strict=True):
        if ipaddress.ip_address(ip) not in hub_net:
            raise AzureConfigError(f"{where}: {inst} address {ip} is outside the hub AddressSpace {hub_net}; the "
                                   "lab puts both instances on the hub's segment")
    site_ip = c0.site_address
    vpn_nets = [_net(p, "--vpn-prefix") for p in opts.vpn_prefixes]
    er_nets = [_net(p, "--er-prefix") for p in opts.er_prefixes]
    azure_nets = [hub_net, *spokes]
    for n in (*vpn_nets, *er_nets):
        for az in azure_nets:
            if n.overlaps(az):
                raise AzureConfigError(f"{where}: on-prem prefix {n} overlaps the Azure prefix {az}")
    if any(ipaddress.ip_address(site_ip) in n for n in (*vpn_nets, *azure_nets)):
        raise AzureConfigError(f"{where}: the site address {site_ip} lies inside a VPN or Azure prefix; the VPN "
                               "device address must be reachable over ExpressRoute, outside the tunnels")
    for c in (c0, c1):
        gb = c.gateway_bgp_address
        if gb and not (ipaddress.ip_address(gb) in hub_net or ipaddress.ip_address(gb).is_link_local):
            raise AzureConfigError(f"{where}: {c.instance} BGP peering address {gb} is neither in the hub "
                                   f"AddressSpace {hub_net} nor a custom APIPA address")
    peer = c0.bgp_peer_address
    if peer and any(ipaddress.ip_address(peer) in n for n in azure_nets):
        raise AzureConfigError(f"{where}: the site's BGP peering address {peer} lies inside an Azure prefix")
    bgp_on = c0.bgp_enabled
    if not opts.static and not bgp_on:
        raise AzureConfigError(
            f"{where}: connectionConfiguration.IsBgpEnabled is false, so Azure routes this site statically and "
            "there is no VPN BGP to declare; write the lab with --static-routing")
    used = [*vpn_nets, *er_nets, *azure_nets, ipaddress.ip_network(site_ip)]
    t = _transit(used)
    ce_m1, ce_m2, m1_hub, m2_hub = (list(x.hosts()) for x in t[:4])  # 2 hosts each
    tr = {k: str(v) for k, v in {
        "ce_m1": ce_m1[0], "m1_ce": ce_m1[1], "ce_m2": ce_m2[0], "m2_ce": ce_m2[1],
        "m1_hub": m1_hub[0], "hub_m1": m1_hub[1], "m2_hub": m2_hub[0], "hub_m2": m2_hub[1]}.items()}
    # addresses the file gives to a node: no generated address may take them
    taken = {site_ip, *gw_ips, *(x for c in (c0, c1) for x in (c.bgp_peer_address, c.gateway_bgp_address) if x)}
    hub_ip = _host(hub_net, 1, taken)
    lan1 = vpn_nets[0]
    ce_lan1 = _host(lan1, 1, taken)
    host1 = _host(lan1, 10, taken | {ce_lan1})
    # an ER-only on-prem host: the first /24 (or the prefix itself) of the ER prefixes outside the VPN ones
    lan2: Net | None = None
    for n in er_nets:
        for sub in (n.subnets(new_prefix=24) if n.prefixlen < 24 and n.version == 4 else [n]):
            if not any(sub.overlaps(v) for v in vpn_nets):
                lan2 = sub
                break
        if lan2 is not None:
            break
    ce_asn = c0.site_asn or DEFAULT_SITE_ASN
    hub_prefixes = [str(n) for n in azure_nets]
    vpn_strs = [str(n) for n in vpn_nets]
    er_adv = [*[str(n) for n in er_nets], f"{site_ip}/32"]

    nodes: dict[str, Any] = {}
    nodes["onprem1"] = {"kind": "host", "addresses": {"eth0": [f"{host1}/{lan1.prefixlen}"]},
                        "routes": [{"dst": "default", "via": ce_lan1}]}
    ce_addrs: dict[str, list[str]] = {"lan1": [f"{ce_lan1}/{lan1.prefixlen}"]}
    links: list[dict[str, Any]] = [{"endpoints": ["onprem1:eth0", "ce:lan1"]}]
    if lan2 is not None:
        ce_lan2 = _host(lan2, 1, taken)
        host2 = _host(lan2, 10, taken | {ce_lan2})
        nodes["onprem2"] = {"kind": "host", "addresses": {"eth0": [f"{host2}/{lan2.prefixlen}"]},
                            "routes": [{"dst": "default", "via": ce_lan2}]}
        ce_addrs["lan2"] = [f"{ce_lan2}/{lan2.prefixlen}"]
        links.append({"endpoints": ["onprem2:eth0", "ce:lan2"]})
    ce_addrs["msee1"] = [f"{tr['ce_m1']}/30"]
    ce_addrs["msee2"] = [f"{tr['ce_m2']}/30"]
    ce_lo = [f"{site_ip}/32"]
    if not opts.static and c0.bgp_peer_address and c0.bgp_peer_address != site_ip:
        ce_lo.append(f"{c0.bgp_peer_address}/32")
    ce_addrs["lo"] = ce_lo
    ce: dict[str, Any] = {"kind": "ipsecemu", "addresses": ce_addrs,
                          "sysctls": {"net.ipv4.fib_multipath_hash_policy": 1}}
    if opts.static:
        ce["routes"] = [{"dst": p, "nexthops": _ecmp(tr["m1_ce"], tr["m2_ce"])} for p in hub_prefixes]
        # on-prem prefers the VPN for the VPN-connected prefixes only (source rule into the tunnel table)
        ce["rules"] = [{"from": p, "table": 100, "priority": 100 + i} for i, p in enumerate(vpn_strs)]
    nodes["ce"] = ce
    for m, ce_side, hub_side, hub_peer in (("msee1", "m1_ce", "m1_hub", "hub_m1"),
                                          ("msee2", "m2_ce", "m2_hub", "hub_m2")):
        node: dict[str, Any] = {"kind": "router", "addresses": {"ce": [f"{tr[ce_side]}/30"],
                                                               "hub": [f"{tr[hub_side]}/30"]}}
        if opts.static:
            ce_peer = tr["ce_m1"] if m == "msee1" else tr["ce_m2"]
            node["routes"] = ([{"dst": p, "via": ce_peer} for p in er_adv]
                              + [{"dst": p, "via": tr[hub_peer]} for p in hub_prefixes])
        nodes[m] = node
    hub_addrs: dict[str, list[str]] = {"msee1": [f"{tr['hub_m1']}/30"], "msee2": [f"{tr['hub_m2']}/30"],
                                       "hubnet": [f"{hub_ip}/{hub_net.prefixlen}"]}
    for i, s in enumerate(spokes, 1):
        hub_addrs[f"spoke{i}"] = [f"{_host(s, 1, taken)}/{s.prefixlen}"]
    hub: dict[str, Any] = {"kind": "router", "addresses": hub_addrs,
                           "sysctls": {"net.ipv4.fib_multipath_hash_policy": 1}}
    if opts.static:
        hub["routes"] = ([{"dst": p, "nexthops": _ecmp(tr["m1_hub"], tr["m2_hub"])} for p in er_adv]
                         # learnt from the VPN gateway instances (VPN BGP in Azure): both instances, ECMP
                         + [{"dst": p, "nexthops": _ecmp(*gw_ips)} for p in vpn_strs])
    nodes["hub"] = hub
    links += [{"endpoints": ["ce:msee1", "msee1:ce"]}, {"endpoints": ["ce:msee2", "msee2:ce"]},
              {"endpoints": ["msee1:hub", "hub:msee1"]}, {"endpoints": ["msee2:hub", "hub:msee2"]}]
    for i, c in enumerate((c0, c1)):
        gw_addrs: dict[str, list[str]] = {"eth0": [f"{gw_ips[i]}/{hub_net.prefixlen}"]}
        if not opts.static and c.gateway_bgp_address and c.gateway_bgp_address != gw_ips[i]:
            gw_addrs["lo"] = [f"{c.gateway_bgp_address}/32"]
        nodes[f"hubgw{i}"] = {"kind": "ipsecemu", "addresses": gw_addrs,
                              "routes": [{"dst": "default", "via": hub_ip}]}
    for i, s in enumerate(spokes, 1):
        gw = _host(s, 1, taken)
        nodes[f"spoke{i}"] = {"kind": "host", "addresses": {"eth0": [f"{_host(s, 4, taken | {gw})}/{s.prefixlen}"]},
                              "routes": [{"dst": "default", "via": gw}]}
        links.append({"endpoints": [f"hub:spoke{i}", f"spoke{i}:eth0"]})

    lab: dict[str, Any] = {"name": opts.name or _lab_name(site), "nodes": nodes, "links": links,
                           "segments": [{"name": "hubnet", "members": ["hub:hubnet", "hubgw0:eth0", "hubgw1:eth0"]}]}
    if not opts.static:
        lab["routing"] = {
            "preference": opts.preference,
            "timers": "lab",
            "ce": {"node": "ce", "asn": ce_asn, "expressroute": {"advertise": er_adv},
                   "vpn": {"advertise": vpn_strs}},
            "msees": ["msee1", "msee2"],
            "hub": {"node": "hub", "prefixes": hub_prefixes},
        }
    vpn_conns = []
    for i, c in enumerate((c0, c1)):
        conn: dict[str, Any] = {"name": f"ce-hubgw{i}", "nodes": ["ce", f"hubgw{i}"],
                                "addresses": [site_ip, gw_ips[i]]}
        if opts.static:
            conn["routes"] = {"ce": hub_prefixes, f"hubgw{i}": vpn_strs}
            conn["table"] = {"ce": 100}
        else:
            conn["bgp"] = {"ce": c.bgp_peer_address, f"hubgw{i}": c.gateway_bgp_address}
        conn["config"] = _shared_config(c, opts.show_psk)
        vpn_conns.append(conn)
    lab["vpn"] = {"connections": vpn_conns}
    flows: list[dict[str, Any]] = []
    if spokes:
        flows.append({"name": "vpn-icmp", "from": "onprem1", "to": "spoke1", "proto": "icmp", "expect": "encrypted"})
        flows.append({"name": "vpn-tcp", "from": "onprem1", "to": "spoke1", "proto": "tcp", "port": 8080,
                      "expect": "encrypted"})
        if lan2 is not None:
            flows.append({"name": "er-icmp", "from": "onprem2", "to": "spoke1", "proto": "icmp", "expect": "clear"})
    if flows:
        lab["audit"] = {"untrusted": ["ce:msee1", "ce:msee2", "hub:msee1", "hub:msee2"], "flows": flows}
    return lab


def _shared_config(c: AzureConnection, show_psk: bool) -> dict[str, Any]:
    """The ``config`` both ends of a lab connection share.

    No ``local_id``/``remote_id`` here: the lab gives this mapping to BOTH sides, so an id written
    here would be the same on both ends and one side's check of its peer fails (the
    AUTHENTICATION_FAILED of issue 10).  Each side's identity is then its own IKE address, which is
    what Azure uses (site IPAddress, instance address)."""
    cfg = c.config
    out: dict[str, Any] = {"psk": cfg.auth.secret.decode() if show_psk and cfg.auth.secret else f"env:{PSK_ENV}"}
    if c.custom_policy and cfg.azure_policy is not None:
        p = cfg.azure_policy
        out["ipsec_policy"] = {"ike_encryption": p.ike_encryption, "ike_integrity": p.ike_integrity,
                               "dh_group": p.dh_group, "ipsec_encryption": p.ipsec_encryption,
                               "ipsec_integrity": p.ipsec_integrity, "pfs_group": p.pfs_group,
                               "sa_lifetime_seconds": p.sa_lifetime_seconds,
                               "sa_datasize_kilobytes": p.sa_datasize_kilobytes}
    else:
        out["ike_proposals"] = [p.to_strongswan_string() for p in cfg.ike_proposals]
        out["esp_proposals"] = [p.to_strongswan_string() for p in cfg.esp_proposals]
        out["child_lifetime"] = {"seconds": cfg.child_lifetime.seconds, "kilobytes": cfg.child_lifetime.kilobytes}
    out["dpd"] = dict(_DPD)
    return out


class _NoAliases(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no stubs here
    """Repeat shared lists instead of writing &id001 anchors: the file is for people to read and edit."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_lab(lab: dict[str, Any], source: str, conns: Sequence[AzureConnection], opts: LabOptions) -> str:
    """The lab YAML text with a header that says where each part came from."""
    c0 = conns[0]
    form = "static routes (--static-routing)" if opts.static else "routing intent (BGP; the lab generates FRR)"
    policy = "the file's custom policy" if c0.custom_policy else \
        "Azure Virtual WAN's documented default proposals (initiator order, no PFS)"
    head = [
        f"# Generated by `ipsecemu config import-azure` from {source}, site {c0.site!r}.",
        f"# From the file: site address {c0.site_address} (CE lo, its VPN device address), hub AddressSpace "
        f"{c0.hub_address_space},",
        f"#   ConnectedSubnets {', '.join(c0.connected_subnets) or '-'} (one spoke host each), Instance0/Instance1 "
        f"{', '.join(str(c.config.remote_address) for c in conns)},",
        f"#   lifetimes {c0.config.child_lifetime.seconds} s / {c0.config.child_lifetime.kilobytes} KB, proposals: "
        f"{policy}.",
        f"# Not in the file (options): VPN prefixes {', '.join(opts.vpn_prefixes)} (--vpn-prefix), ER prefixes "
        f"{', '.join(opts.er_prefixes)} (--er-prefix);",
        "#   transit /30s picked outside every prefix above.  Routing: " + form + ".",
    ]
    if not opts.show_psk:
        head.append(f"# The PSK is not in this file: export {PSK_ENV}=<the PSK from the device configuration>.")
    body = yaml.dump(lab, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(head) + "\n" + str(body)
