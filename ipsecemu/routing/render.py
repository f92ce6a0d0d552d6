"""Routing intent -> FRR 8.4 integrated configuration (``frr.conf``), loaded with ``vtysh -f``.

Every neighbour gets an explicit inbound and outbound route-map (FRR's eBGP default refuses to send or
accept anything without one, RFC 8212), so what a node advertises is exactly what its intent says.
On a Virtual WAN hub the inbound route-maps carry the hub routing preference (see
:func:`ipsecemu.routing.azure.hub_path_attributes`).
"""

from __future__ import annotations

from ipsecemu.routing.azure import hub_path_attributes
from ipsecemu.routing.intent import HubRoutingPreference, Neighbor, RoutingNode

FRR_VERSION = "8.4"


def _rm_in(n: Neighbor) -> str:
    return f"RM-{n.name}-IN"


def _rm_out(n: Neighbor) -> str:
    return f"RM-{n.name}-OUT"


def _pl_out(n: Neighbor) -> str:
    return f"PL-{n.name}-OUT"


def _pl_deny(n: Neighbor) -> str:
    return f"PL-{n.name}-DENY-IN"


def _session_lines(node: RoutingNode, n: Neighbor) -> list[str]:
    a = n.address
    lines = [f" neighbor {a} remote-as {n.remote_asn}",
             f" neighbor {a} description {n.name} ({n.kind.value})",
             f" neighbor {a} timers {n.timers.keepalive} {n.timers.hold}",
             f" neighbor {a} timers connect {n.timers.connect}"]
    if n.ebgp_multihop is not None:
        lines.append(f" neighbor {a} ebgp-multihop {n.ebgp_multihop}")
    if n.update_source:
        lines.append(f" neighbor {a} update-source {n.update_source}")
    if n.passive:
        lines.append(f" neighbor {a} passive")
    if n.bfd:
        lines.append(f" neighbor {a} bfd profile {node.bfd_profile.name}")
    return lines


def _af_lines(node: RoutingNode) -> list[str]:
    lines = [" address-family ipv4 unicast"]
    lines += [f"  network {p}" for p in node.originate]
    for n in node.neighbors:
        a = n.address
        if n.next_hop_self:
            lines.append(f"  neighbor {a} next-hop-self")
        if n.route_reflector_client:
            lines.append(f"  neighbor {a} route-reflector-client")
        lines.append(f"  neighbor {a} route-map {_rm_in(n)} in")
        lines.append(f"  neighbor {a} route-map {_rm_out(n)} out")
    lines.append(f"  maximum-paths {node.maximum_paths}")
    lines.append(f"  maximum-paths ibgp {node.maximum_paths}")
    lines.append(" exit-address-family")
    return lines


def _inbound_sets(node: RoutingNode, n: Neighbor) -> list[str]:
    sets = [f" set weight {n.weight}"] if n.weight is not None else []
    if node.hub_preference is not None:
        attrs = hub_path_attributes(node.hub_preference, n.kind)
        if attrs is not None:
            local_pref, med = attrs
            return sets + [f" set local-preference {local_pref}", f" set metric {med}"]
    if n.local_preference is not None:
        sets.append(f" set local-preference {n.local_preference}")
    return sets


def _policy_lines(node: RoutingNode) -> list[str]:
    lines: list[str] = []
    for n in node.neighbors:
        if n.advertise:
            lines += [f"ip prefix-list {_pl_out(n)} seq {5 * (i + 1)} permit {p}"
                      for i, p in enumerate(n.advertise)]
            lines.append("!")
    for n in node.neighbors:
        if n.deny_in:
            lines += [f"ip prefix-list {_pl_deny(n)} seq {5 * (i + 1)} permit {p}"
                      for i, p in enumerate(n.deny_in)]
            lines.append("!")
    for n in node.neighbors:
        if n.deny_in:
            lines += [f"route-map {_rm_in(n)} deny 5", f" match ip address prefix-list {_pl_deny(n)}", "exit", "!"]
        lines.append(f"route-map {_rm_in(n)} permit 10")
        lines += _inbound_sets(node, n)
        lines += ["exit", "!"]
        if n.advertise is not None and not n.advertise:
            lines += [f"route-map {_rm_out(n)} deny 10", "exit", "!"]
            continue
        lines.append(f"route-map {_rm_out(n)} permit 10")
        if n.advertise:
            lines.append(f" match ip address prefix-list {_pl_out(n)}")
        if n.prepend:
            lines.append(" set as-path prepend " + " ".join([str(node.asn)] * n.prepend))
        lines += ["exit", "!"]
    return lines


def render_frr_conf(node: RoutingNode) -> str:
    """The whole ``frr.conf`` of one node."""
    lines = [f"frr version {FRR_VERSION}", "frr defaults traditional", f"hostname {node.name}",
             "service integrated-vtysh-config", "!"]
    if node.static_routes:
        lines += [f"ip route {r.prefix} {r.nexthop}" for r in node.static_routes]
        lines.append("!")
    if node.uses_bfd:
        p = node.bfd_profile
        lines += ["bfd", f" profile {p.name}", f"  detect-multiplier {p.detect_multiplier}",
                  f"  receive-interval {p.receive_interval_ms}",
                  f"  transmit-interval {p.transmit_interval_ms}", " exit", " !", "exit", "!"]
    lines += [f"router bgp {node.asn}", f" bgp router-id {node.router_id}",
              " no bgp ebgp-requires-policy",  # every session has explicit route-maps anyway
              # Originate the declared prefixes even when no route for them exists yet in this netns.
              " no bgp network import-check",
              " bgp log-neighbor-changes"]
    if node.hub_preference is HubRoutingPreference.ASPATH:
        # MED breaks AS-path ties between ER (from AS 12076) and VPN (iBGP): compare it across ASes.
        lines.append(" bgp always-compare-med")
    for n in node.neighbors:
        lines += _session_lines(node, n)
    lines.append(" !")
    lines += _af_lines(node)
    lines += ["exit", "!"]
    lines += _policy_lines(node)
    lines.append("end")
    return "\n".join(lines) + "\n"
