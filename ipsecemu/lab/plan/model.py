"""The plan of one lab: what ``lab up`` will create and run, node by node, as frozen data.

Compiled once from a validated :class:`~ipsecemu.lab.topology.Topology` by
:func:`ipsecemu.lab.plan.compile_plan`; the builder and the services only execute it, and
``lab up --dry-run`` prints it and writes its generated files.  Paths of generated files are
relative to the lab's state dir (``/run/ipsecemu/<lab>/``) so a dry run can write them elsewhere;
what goes *inside* them (sockets, state dirs) is the real location ``lab up`` would use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ipsecemu.strongswan.conn import Conn

from ..topology import Route, Rule

# Daemon kinds.  A new kind (the FRR daemons of the routing issue: "frr-zebra", "frr-bgpd"...) is
# one more Daemon in NodePlan.daemons with its generated config in ``files``, plus a service
# module that starts the daemons of its kind (see ipsecemu.lab.services).
GATEWAY = "ipsecemu-gateway"
CHARON = "charon"
MACSEC_LINK = "macsec-link"
ROUTE_AGENT = "route-agent"
FRR = "frr"  # one FRR instance (zebra, bgpd, +bfdd/staticd) per routing node; run_dir = its state dir
IMPAIR = "impair"


def _frozen(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class GeneratedFile:
    """A config file a daemon reads.  ``secret``: written 0600 (PSK, CAK inside)."""

    path: str  # relative to the lab state dir, e.g. "ce/gateway.yaml"
    text: str
    secret: bool = False


@dataclass(frozen=True)
class Daemon:
    """One process ``lab up`` starts and registers by PID.

    ``argv`` is what runs inside the node's netns (``ip netns exec`` is added at apply time), or in
    the root netns when ``node`` is None.  charon is started through
    :class:`ipsecemu.strongswan.charon.Charon` (its own run dir) and fed ``conns`` over vici, so its
    argv is empty and its ``files`` hold the equivalent swanctl.conf.
    """

    kind: str
    node: str | None
    argv: tuple[str, ...] = ()
    files: tuple[GeneratedFile, ...] = ()
    log: str = ""  # relative to the lab state dir (or absolute: charon logs in its own dir)
    conns: tuple[Conn, ...] = ()  # charon only
    run_dir: str | None = None  # charon only: its instance dir (absolute, outside /run)
    info: Mapping[str, Any] = field(default_factory=_frozen)  # kind-specific facts for messages


@dataclass(frozen=True)
class Veth:
    netns: str
    ifname: str
    peer_netns: str
    peer_ifname: str
    mtu: int | None = None


@dataclass(frozen=True)
class Tap:
    """A persistent tap: the L3 side of a MACsec link, opened later by its link daemon."""

    netns: str
    ifname: str
    mtu: int | None = None


@dataclass(frozen=True)
class ImpairPlan:
    """The helper netns of an impaired link: its two veth ends (``ifaces``, peers of the link's
    endpoints), brought up by the builder; the element daemon (kind IMPAIR) forwards between them."""

    netns: str
    ifaces: tuple[str, str]
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SegmentPlan:
    """A bridge ``br0`` in its own netns with one veth port ``p<j>`` per member."""

    name: str
    netns: str
    ports: tuple[Veth, ...]  # netns/ifname: the member's end; peer: the bridge port
    mtu: int | None = None
    sysctls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Tunnel:
    """One route-based IPsec tunnel end on a VPN node."""

    conn: str
    dev: str
    local: str
    remote: str
    peer: str
    table: int
    prefixes: tuple[str, ...]  # what this node sends into the tunnel
    control: str  # the socket the route agent asks (gateway control socket or charon vici)


@dataclass(frozen=True)
class NodePlan:
    name: str
    kind: str
    netns: str
    base_sysctls: tuple[tuple[str, str], ...]  # set right after the netns exists
    interfaces: tuple[str, ...]  # brought up (besides lo); every one a `lab capture` target
    taps: tuple[str, ...]  # of those, the MACsec taps (no carrier until their daemon runs)
    addresses: tuple[tuple[str, str], ...]
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    sysctls: tuple[tuple[str, str], ...]  # the topology's own, set last
    tunnels: tuple[Tunnel, ...] = ()
    daemons: tuple[Daemon, ...] = ()


@dataclass(frozen=True)
class LabPlan:
    name: str
    source: str
    lab_dir: Path  # where `lab up` keeps state; generated paths are relative to it
    nodes: tuple[NodePlan, ...]
    segments: tuple[SegmentPlan, ...] = ()
    links: tuple[Veth | Tap, ...] = ()  # in creation order (a MACsec link: its veth, then both taps)
    daemons: tuple[Daemon, ...] = ()  # root netns (the VPN route agent)
    route_plan: Mapping[str, Any] | None = None  # what the route agent watches (vpn-plan.json)
    notes: tuple[str, ...] = ()  # said once at apply (e.g. a throw-away MACsec key)
    impairs: tuple[ImpairPlan, ...] = ()  # helper netns of impaired links (ipsecemu.lab.plan.impair)

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def netns(self) -> list[tuple[str, str]]:
        """Every netns to create, with its owner label for the state file, in creation order."""
        return ([(n.netns, f"node:{n.name}") for n in self.nodes]
                + [(s.netns, f"segment:{s.name}") for s in self.segments]
                + [(i.netns, "impair") for i in self.impairs])

    def all_daemons(self) -> Iterator[Daemon]:
        """In start order within a kind: nodes in file order, then the root netns."""
        for n in self.nodes:
            yield from n.daemons
        yield from self.daemons

    def daemons_of(self, kind: str) -> list[Daemon]:
        return [d for d in self.all_daemons() if d.kind == kind]

    def files(self) -> list[GeneratedFile]:
        return [f for d in self.all_daemons() for f in d.files]

    def file(self, path: str) -> GeneratedFile:
        for f in self.files():
            if f.path == path:
                return f
        raise KeyError(path)
