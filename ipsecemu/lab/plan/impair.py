"""The impairment part of a lab plan: for every link with ``impair:``, a helper netns where both
ends of the link arrive (two veth pairs instead of one) and the element daemon
(``python -m ipsecemu.lab.impair_daemon``, native/src/impair.c) that forwards between them with
the link's delay, loss, rate... per direction.  The daemon runs in the root netns and opens its two
AF_PACKET sockets inside the helper netns; its control socket is ``<node>/impair-<iface>.sock``
(named after endpoints[0]) in the lab state dir, what ``lab impair`` and ``lab status`` talk to."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from ipsecemu.config.sku import ESP_FRAME_OVERHEAD, sku

from ..impair_schema import Impair, ImpairDir
from ..topology import Link, Topology, sku_uplinks
from .model import IMPAIR, Daemon, GeneratedFile, ImpairPlan, Veth

SIDES = ("side_a", "side_b")  # the helper netns ends, peers of endpoints[0] / endpoints[1]
ETH_OVERHEAD = 22  # Ethernet header + two VLAN tags: the largest frame is mtu + this


def link_impair(topo: Topology, lk: Link) -> Impair | None:
    """What the element of ``lk`` does: its ``impair:``, capped at the SKU rate where an end is the
    uplink of a VPN node with a ``sku:`` (charged for the tunnelled bytes only); None: no element."""
    out = lk.impair
    for ep in (lk.a, lk.b):
        n = topo.node(ep.node)
        if n.sku is None or ep.iface not in sku_uplinks(n, topo.vpn):
            continue
        cap = sku(n.sku).rate_bps
        out = out or Impair()
        out = Impair(*(_capped(d, cap) for d in out.dirs()))
    return out


def _capped(d: ImpairDir, cap: int) -> ImpairDir:
    if d.rate_bps and d.rate_bps <= cap:
        return d  # the link's own rate is lower already
    return replace(d, rate_bps=cap, rate_overhead=-ESP_FRAME_OVERHEAD)


def base(lk: Link) -> str:
    """State-dir stem of the link's element files (after endpoints[0])."""
    return f"{lk.a.node}/impair-{lk.a.iface}"


def veths(topo: Topology, lk: Link, na: str, nb: str) -> list[Veth]:
    ns = topo.impair_netns(topo.links.index(lk))
    return [Veth(na, lk.a.iface, ns, SIDES[0], lk.mtu), Veth(ns, SIDES[1], nb, lk.b.iface, lk.mtu)]


def helpers(topo: Topology, sysctls: tuple[tuple[str, str], ...]) -> tuple[ImpairPlan, ...]:
    return tuple(ImpairPlan(topo.impair_netns(i), SIDES, sysctls)
                 for i, lk in enumerate(topo.links) if link_impair(topo, lk) is not None)


def daemons(topo: Topology, lab_dir: Path) -> list[Daemon]:
    out = []
    for i, lk in enumerate(topo.links):
        imp = link_impair(topo, lk)
        if imp is None:
            continue
        stem = base(lk)
        cfg = {"link": f"{lk.a} <-> {lk.b}", "netns": topo.impair_netns(i), "sides": list(SIDES),
               "ends": [[lk.a.node, lk.a.iface, topo.netns(lk.a.node)], [lk.b.node, lk.b.iface, topo.netns(lk.b.node)]],
               "max_frame": (lk.mtu or 1500) + ETH_OVERHEAD,
               "a_to_b": imp.a_to_b.to_json(), "b_to_a": imp.b_to_a.to_json()}
        argv = (sys.executable, "-m", "ipsecemu.lab.impair_daemon", "--config", str(lab_dir / f"{stem}.json"),
                "--control", str(lab_dir / f"{stem}.sock"))
        out.append(Daemon(IMPAIR, None, argv, (GeneratedFile(f"{stem}.json", json.dumps(cfg, indent=1)),),
                          log=f"{stem}.log", info={**cfg, "control": f"{stem}.sock"}))
    return out
