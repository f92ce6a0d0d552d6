"""When a BGP lab has converged under a failure of ``lab audit --failures``, and after its restore.

Labs routed by FRR (``routing:``; lab/svc_frr.py) have no route agent, so its published view
(``svc_vpn.read_status``, the static labs' sign: :func:`ipsecemu.lab.audit_failures.wait_stable`)
never moves there.  Their own sign is read from FRR (vtysh JSON through lab/svc_frr.py):

- baseline, before the failure: every routing node's BGP sessions (state, prefix counts, the epoch
  it was established at) and its selected BGP routes (prefix -> next hops);
- applied: every session the failure touches (one to a frozen instance, the one inside a terminated
  tunnel, one across a link set down) left Established, or came back with a new established epoch
  (the other end re-initiated faster than we poll), at every node that still answers; then the
  kernel routes of every node, the session states and the prefix counts unchanged for ``quiet``;
- restored: every session Established at the baseline is Established again and every node's
  selected BGP routes are those of the baseline; then unchanged for ``quiet`` again.

Everything is bounded by the caller's deadline; a miss returns False (a note under the matrix).
Frozen nodes (SIGSTOPped bgpd) are never asked: vtysh would block on them until its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.errors import ServiceError

from .state import LabState
from .svc_frr import instance, routing_nodes, sessions
from .topology import Topology

POLL_S = 0.25
Key = tuple[str, str]  # (routing node, BGP peer address)
Session = tuple[str, int, int, int]  # state, prefixes received, prefixes sent, established epoch
Routes = frozenset[tuple[str, tuple[str, ...]]]  # {(prefix, next hops)} of selected BGP routes


def is_bgp_lab(state: LabState) -> bool:
    """A running lab whose nodes run FRR (then its convergence is read from BGP)."""
    return bool(routing_nodes(state))


@dataclass
class View:
    sessions: dict[Key, Session] = field(default_factory=dict)
    routes: dict[str, Routes] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)  # routing nodes whose bgpd/zebra did not answer

    def stable_part(self) -> tuple[Any, ...]:
        """What must stop moving (the epochs do not: a restarted session is already a state change)."""
        return (tuple(sorted((k, s[:3]) for k, s in self.sessions.items())),
                tuple(sorted(self.routes.items())), tuple(sorted(self.silent)))


def read_view(state: LabState, skip: Iterable[str] = ()) -> View:
    v = View()
    skipped = set(skip)
    for node in routing_nodes(state):
        if node in skipped:
            continue
        inst = instance(state, node)
        try:
            for addr, p in sessions(inst).items():
                v.sessions[(node, addr)] = (str(p.get("state")), int(p.get("pfxRcd", 0)),
                                            int(p.get("pfxSnt", 0)), int(p.get("peerUptimeEstablishedEpoch", 0)))
            doc = inst.vtysh_json("show ip route json", daemon="zebra")
        except (ServiceError, ValueError, TypeError):
            v.silent.add(node)
            continue
        rts = set()
        for prefix, entries in doc.items() if isinstance(doc, dict) else ():
            for e in entries:
                if e.get("selected") and e.get("protocol") == "bgp":
                    hops = tuple(sorted(str(h.get("ip") or h.get("interfaceName") or "?")
                                        for h in e.get("nexthops", []) if h.get("active")))
                    rts.add((prefix, hops))
        v.routes[node] = frozenset(rts)
    return v


def _owners(topo: Topology) -> dict[str, str]:
    """address -> node: every interface address and every in-tunnel BGP address."""
    out = {a.split("/")[0]: n.name for n in topo.nodes for _, a in n.addresses}
    out.update({a: n for c in topo.vpn for n, a in c.bgp})
    return out


def touched(topo: Topology, base: View, frozen: tuple[str, ...] = (), conn: str | None = None,
            link: tuple[str, str] | None = None) -> set[Key]:
    """The sessions Established at ``base`` that the failure takes down, seen from nodes still running:
    to a ``frozen`` node, inside tunnel ``conn``, across the link with end ``link`` = (node, iface)."""
    owners = _owners(topo)
    peer_addrs: dict[str, set[str]] = {}  # node -> peer addresses that break, seen from it
    for node in {n for n, _ in base.sessions} - set(frozen):
        peer_addrs[node] = {a for a, o in owners.items() if o in frozen}
    if conn is not None:
        c = next((c for c in topo.vpn if c.name == conn), None)
        if c is not None:
            for n, _ in c.bgp:
                peer_addrs.setdefault(n, set()).update(a for m, a in c.bgp if m != n)
    if link is not None:
        lk = next((lk for lk in topo.links if link in ((lk.a.node, lk.a.iface), (lk.b.node, lk.b.iface))), None)
        if lk is not None:
            for me, other in ((lk.a, lk.b), (lk.b, lk.a)):
                addrs = {a.split("/")[0] for a in topo.node(other.node).addresses_on(other.iface)}
                peer_addrs.setdefault(me.node, set()).update(addrs)
    return {k for k, s in base.sessions.items()
            if s[0] == "Established" and k[1] in peer_addrs.get(k[0], set())}


def _broken(now: View, base: View, keys: set[Key]) -> bool:
    for k in keys:
        s = now.sessions.get(k)
        if s is None or (s[0] == "Established" and s[3] == base.sessions[k][3]):
            return False
    return True


def _back(now: View, base: View) -> bool:
    up = all(now.sessions.get(k, ("",))[0] == "Established" for k, s in base.sessions.items() if s[0] == "Established")
    return up and not now.silent and now.routes == base.routes


@dataclass
class BgpWatch:
    """One failure's BGP view: the baseline taken before it is applied, then the two waits."""

    topo: Topology
    state: LabState
    base: View
    keys: set[Key]
    frozen: tuple[str, ...] = ()

    @classmethod
    def start(cls, topo: Topology, state: LabState, frozen: tuple[str, ...] = (), conn: str | None = None,
              link: tuple[str, str] | None = None) -> BgpWatch:
        base = read_view(state)
        return cls(topo, state, base, touched(topo, base, frozen, conn, link), frozen)

    def _until(self, cond: Callable[[View], bool], deadline: float, skip: tuple[str, ...]) -> bool:
        while True:
            if cond(read_view(self.state, skip)):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)

    def _quiet(self, kernel: Callable[[], Any], quiet: float, deadline: float, skip: tuple[str, ...]) -> bool:
        """Kernel routes (``kernel()``) and the BGP view unchanged for ``quiet`` seconds."""
        last, since = (kernel(), read_view(self.state, skip).stable_part()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            snap = (kernel(), read_view(self.state, skip).stable_part())
            if snap != last:
                last, since = snap, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
        return False

    def wait_applied(self, kernel: Callable[[], Any], quiet: float, deadline: float) -> bool:
        ok = self._until(lambda v: _broken(v, self.base, self.keys), deadline, self.frozen)
        return ok and self._quiet(kernel, quiet, deadline, self.frozen)

    def wait_restored(self, kernel: Callable[[], Any], quiet: float, deadline: float) -> bool:
        ok = self._until(lambda v: _back(v, self.base), deadline, ())
        return ok and self._quiet(kernel, quiet, deadline, ())
