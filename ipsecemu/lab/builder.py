"""Apply a lab plan (:mod:`ipsecemu.lab.plan`) to network namespaces with pyroute2, and tear it down.

Layout: one named netns ``<lab>-<node>`` per node (so ``ip netns exec er-vwan-ce tcpdump`` works),
one ``<lab>--<segment>`` per shared segment holding bridge ``br0``.  Veth pairs are created
inside the first endpoint's netns with the peer placed directly in the other netns, so nothing
ever appears in the root namespace and link names only need to be unique per node.

Every netns is recorded in the state file before it is created; removing a netns removes its
links, so teardown = stop recorded processes, stop anything still running inside the lab's
netns, delete the netns, delete the state dir.  Teardown is idempotent.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ipsecemu.base.errors import IpsecemuError
from ipsecemu.net import NetError
from ipsecemu.net.netns import NETNS_DIR, netns_exists, open_ipr, pids_in_netns, sysctl
from ipsecemu.net.proc import stop_pids
from ipsecemu.net.tun import open_tun

from . import services
from .errors import BuildError, LabKept
from .plan import LabPlan, compile_plan
from .plan.model import Tap, Veth
from .state import LabState, LabStateError, failed_note, keep_failed_logs
from .topology import Route, Rule, Topology

Say = Callable[[str], None]
BRIDGE = "br0"
LINK_UP_TIMEOUT = 5.0
IFA_F_NODAD = 0x02


def _quiet(_: str) -> None:
    pass


@contextmanager
def ipr_in(ns: str) -> Iterator[IPRoute]:
    """A netlink socket bound to lab netns ``ns`` (:func:`ipsecemu.net.netns.open_ipr`); BuildError
    if the netns is gone."""
    if not netns_exists(ns):
        raise BuildError(f"netns {ns} does not exist")
    try:
        ipr = open_ipr(ns)
    except NetError as exc:  # removed between the check and setns
        raise BuildError(str(exc)) from None
    try:
        yield ipr
    finally:
        ipr.close()


# Set by the CLI's SIGINT/SIGTERM handler; checked between build steps.
INTERRUPTED = threading.Event()


def _test_pause(step: str) -> None:
    """Tests set IPSECEMU_TEST_PAUSE_AFTER=<step name> to interrupt `lab up` at a known point."""
    if os.environ.get("IPSECEMU_TEST_PAUSE_AFTER") == step:
        INTERRUPTED.wait(60)


def _persistent_tap(ns: str, ifname: str) -> None:
    """Create a persistent tap inside ``ns`` (the ioctl acts in the calling thread's netns, which is
    why pyroute2's tuntap support cannot be used from outside)."""
    os.close(open_tun(ifname, tap=True, persist=True, netns=ns))


def _sysctl(ns: str, pairs: list[tuple[str, str]]) -> None:
    try:
        sysctl(ns, pairs)
    except NetError as exc:
        raise BuildError(str(exc)) from None


def _index(ipr: IPRoute, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise BuildError(f"interface {ifname} not found")
    return int(idx[0])


class Builder:
    """Executes a :class:`~ipsecemu.lab.plan.LabPlan`: every name, address and route comes from
    the plan; nothing here looks at the topology."""

    def __init__(self, plan: LabPlan, say: Say = _quiet, base: Path | None = None,
                 keep_on_failure: bool = False) -> None:
        self.plan = plan
        self.say = say
        self.base = base
        self.keep_on_failure = keep_on_failure  # a failure (not Ctrl-C) leaves the lab up for debugging
        self.state: LabState | None = None
        self._pid = os.getpid()

    # ------------------------------------------------------------ entry point
    def up(self) -> LabState:
        """Create everything; on any error or Ctrl-C roll back and re-raise."""
        p = self.plan
        if LabState(p.name, self.base).dir != p.lab_dir:  # the generated configs name the state dir
            raise BuildError(f"plan compiled for state dir {p.lab_dir}, not {LabState(p.name, self.base).dir}")
        self.state = LabState.create(p.name, p.source, {n.name: n.kind for n in p.nodes}, self.base)
        try:
            for step in (self._create_netns, self._base_sysctls, self._segments, self._links,
                         self._addresses_and_up, self._wait_links_up, self._routes_and_rules,
                         self._user_sysctls):
                step()
                _test_pause(step.__name__)
                if INTERRUPTED.is_set():  # a signal whose KeyboardInterrupt got swallowed
                    raise KeyboardInterrupt
            services.start(p, self.state, self.say)
            if INTERRUPTED.is_set():
                raise KeyboardInterrupt
        except BaseException as exc:  # includes KeyboardInterrupt from SIGINT/SIGTERM
            if os.getpid() != self._pid:  # a forked helper (pyroute2) must never roll back
                raise
            interrupted = isinstance(exc, KeyboardInterrupt)
            if self.keep_on_failure and not interrupted:
                with self.state.update() as d:  # `lab status` shows why
                    d["status"], d["error"] = "failed", _one_line(exc)
                raise LabKept(self._message(exc)) from None
            self.say(f"{'interrupted' if interrupted else 'failed'}: rolling back")
            with _signals_ignored():
                # the logs the error names live in the state dir the rollback removes: copy them out
                kept = None if interrupted else keep_failed_logs(self.state)
                try:
                    teardown(p.name, self.say, self.base)
                except Exception as td_exc:  # keep the original error; say what is left
                    self.say(f"rollback incomplete ({td_exc}); run 'ipsecemu lab down {p.name}'")
            if kept is not None:
                if isinstance(exc, IpsecemuError) and not isinstance(exc, BuildError):
                    exc.args = (self._message(exc, kept),)  # keep its family (exit status)
                    raise
                raise BuildError(self._message(exc, kept), logs=kept) from None
            if isinstance(exc, (NetlinkError, NetError)):
                raise BuildError(self._message(exc)) from None
            raise
        self.state.set_status("up")
        return self.state

    def _message(self, exc: BaseException, kept: Path | None = None) -> str:
        """The failure in one line; paths into the removed state dir point at the kept copy."""
        msg = _one_line(exc)
        if kept is not None and self.state is not None:
            if str(self.state.dir) in msg:
                msg = msg.replace(str(self.state.dir), str(kept))
            else:
                msg += f" (logs kept in {kept})"
            msg += f"; {failed_note(kept)}"
        return msg

    # ------------------------------------------------------------ steps
    def _create_netns(self) -> None:
        assert self.state is not None
        wanted = self.plan.netns()
        for ns, _ in wanted:
            if netns_exists(ns):
                raise BuildError(f"netns {ns} already exists (left by something else?); nothing created")
        for ns, owner in wanted:
            self.state.add_netns(ns, owner)
            netns.create(ns)
            self.state.mark_netns(ns, "created")
        self.say(f"netns: created {len(wanted)} ({', '.join(ns for ns, _ in wanted)})")

    def _base_sysctls(self) -> None:
        for n in self.plan.nodes:
            _sysctl(n.netns, list(n.base_sysctls))
        for s in self.plan.segments:
            _sysctl(s.netns, list(s.sysctls))
        for h in self.plan.impairs:
            _sysctl(h.netns, list(h.sysctls))
        self.say(f"sysctls: base set on {len(self.plan.nodes)} nodes")

    def _veth(self, v: Veth) -> None:
        assert self.state is not None
        self.state.add_link(kind="veth", netns=v.netns, ifname=v.ifname, peer_netns=v.peer_netns,
                            peer_ifname=v.peer_ifname)
        with ipr_in(v.netns) as ipr:
            peer: dict[str, Any] = {"ifname": v.peer_ifname}
            if v.peer_netns != v.netns:
                peer["net_ns_fd"] = v.peer_netns
            kw: dict[str, Any] = {"mtu": v.mtu} if v.mtu else {}
            if v.mtu:
                peer["mtu"] = v.mtu
            ipr.link("add", ifname=v.ifname, kind="veth", peer=peer, **kw)

    def _segments(self) -> None:
        for s in self.plan.segments:
            with ipr_in(s.netns) as ipr:
                ipr.link("add", ifname=BRIDGE, kind="bridge", br_forward_delay=0, br_stp_state=0)
                ipr.link("set", index=_index(ipr, BRIDGE), state="up")
            for port in s.ports:
                self._veth(port)
                with ipr_in(s.netns) as ipr:
                    br = _index(ipr, BRIDGE)
                    ipr.link("set", index=_index(ipr, port.peer_ifname), master=br, state="up")
            self.say(f"segment {s.name}: bridge with {len(s.ports)} members "
                     f"({', '.join(self._member(p) for p in s.ports)})")

    def _member(self, port: Veth) -> str:
        node = next(n.name for n in self.plan.nodes if n.netns == port.netns)
        return f"{node}:{port.ifname}"

    def _links(self) -> None:
        for lk in self.plan.links:
            if isinstance(lk, Veth):
                self._veth(lk)
            else:
                self._tap(lk)
        pairs = sum(isinstance(lk, Veth) for lk in self.plan.links)
        if pairs:
            self.say(f"links: {pairs} veth pairs")

    def _tap(self, t: Tap) -> None:
        """A persistent tap: the L3 side of a MACsec link, opened later by the link daemon."""
        assert self.state is not None
        self.state.add_link(kind="tap", netns=t.netns, ifname=t.ifname)
        _persistent_tap(t.netns, t.ifname)
        with ipr_in(t.netns) as ipr:
            if t.mtu:
                ipr.link("set", index=_index(ipr, t.ifname), mtu=t.mtu)

    def _addresses_and_up(self) -> None:
        count = 0
        for n in self.plan.nodes:
            with ipr_in(n.netns) as ipr:
                for iface, cidr in n.addresses:
                    ifi = ipaddress.ip_interface(cidr)
                    kw = {"flags": IFA_F_NODAD} if ifi.version == 6 else {}  # usable at once, no DAD wait
                    ipr.addr("add", index=_index(ipr, iface), address=str(ifi.ip), prefixlen=ifi.network.prefixlen,
                             **kw)
                    count += 1
                for iface in ["lo", *n.interfaces]:
                    ipr.link("set", index=_index(ipr, iface), state="up")
        for h in self.plan.impairs:  # the element's ends: the link has carrier once they are up
            with ipr_in(h.netns) as ipr:
                for iface in h.ifaces:
                    ipr.link("set", index=_index(ipr, iface), state="up")
        self.say(f"addresses: {count} assigned, interfaces up")

    def _wait_links_up(self) -> None:
        """Poll until every veth has carrier (both ends up) instead of sleeping."""
        deadline = time.monotonic() + LINK_UP_TIMEOUT
        for n in self.plan.nodes:
            with ipr_in(n.netns) as ipr:
                for iface in (i for i in n.interfaces if i not in n.taps):  # taps: no carrier before their daemon
                    left = max(0.1, deadline - time.monotonic())
                    try:
                        ipr.poll(ipr.link, "dump", timeout=left, interval=0.01, ifname=iface, operstate="UP")
                    except TimeoutError:
                        raise BuildError(f"{n.name}:{iface} did not come up within {LINK_UP_TIMEOUT:.0f} s") from None
        self.say("links: all up")

    def _route_args(self, ipr: IPRoute, r: Route) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if r.dst == "default":
            fam = 6 if any(h.via and ":" in h.via for h in r.nexthops) else 4
            kw["dst"] = "::/0" if fam == 6 else "0.0.0.0/0"
        else:
            kw["dst"] = r.dst
        if ":" in kw["dst"]:
            kw["family"] = 10
        if r.table is not None:
            kw["table"] = r.table
        if r.metric is not None:
            kw["priority"] = r.metric
        if r.src:
            kw["prefsrc"] = r.src
        if r.multipath:
            hops = []
            for h in r.nexthops:
                hop: dict[str, Any] = {"hops": h.weight - 1}
                if h.via:
                    hop["gateway"] = h.via
                if h.dev:
                    hop["oif"] = _index(ipr, h.dev)
                hops.append(hop)
            kw["multipath"] = hops
        else:
            h = r.nexthops[0]
            if h.via:
                kw["gateway"] = h.via
            if h.dev:
                kw["oif"] = _index(ipr, h.dev)
        return kw

    @staticmethod
    def _rule_args(r: Rule) -> dict[str, Any]:
        kw: dict[str, Any] = {"table": r.table}
        if r.priority is not None:
            kw["priority"] = r.priority
        for key, net in (("src", r.src), ("dst", r.dst)):
            if net:
                n = ipaddress.ip_network(net)
                kw[key], kw[f"{key}_len"] = str(n.network_address), n.prefixlen
                kw["family"] = 10 if n.version == 6 else 2
        if r.iif:
            kw["iifname"] = r.iif
        return kw

    def _routes_and_rules(self) -> None:
        nroutes = nrules = necmp = 0
        for n in self.plan.nodes:
            with ipr_in(n.netns) as ipr:
                for i, r in enumerate(n.routes):
                    try:
                        ipr.route("add", **self._route_args(ipr, r))
                    except NetlinkError as exc:
                        raise BuildError(f"{n.name}: routes[{i}] {r.dst}: {exc.args[-1]}") from None
                    nroutes += 1
                    necmp += r.multipath
                for i, rule in enumerate(n.rules):
                    try:
                        ipr.rule("add", **self._rule_args(rule))
                    except NetlinkError as exc:
                        raise BuildError(f"{n.name}: rules[{i}]: {exc.args[-1]}") from None
                    nrules += 1
        self.say(f"routes: {nroutes} ({necmp} ECMP), rules: {nrules}")

    def _user_sysctls(self) -> None:
        total = 0
        for n in self.plan.nodes:
            _sysctl(n.netns, list(n.sysctls))
            total += len(n.sysctls)
        if total:
            self.say(f"sysctls: {total} from the topology")


def build(topo: Topology, say: Say = _quiet, base: Path | None = None) -> LabState:
    """Plan ``topo`` and apply the plan (``lab up``)."""
    return apply(compile_plan(topo, base), say, base)


def apply(plan: LabPlan, say: Say = _quiet, base: Path | None = None, keep_on_failure: bool = False) -> LabState:
    return Builder(plan, say, base, keep_on_failure).up()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink: {exc.args[-1] if exc.args else exc}"
    if isinstance(exc, BuildError | NetError | LabStateError):
        return str(exc)
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return f"unexpected {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- teardown


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not interrupt the rollback half way."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def orphan_netns(name: str) -> list[str]:
    """Netns that by their name can only belong to lab ``name`` (node names contain no '-')."""
    pat = re.compile(rf"^{re.escape(name)}--?[a-z][a-z0-9_]*$")
    return sorted(n for n in os.listdir(NETNS_DIR) if pat.match(n)) if NETNS_DIR.is_dir() else []


def teardown(name: str, say: Say = _quiet, base: Path | None = None) -> dict[str, int]:
    """Remove every netns, link and process of lab ``name``.  Safe to run again.

    Raises LabStateError when there is nothing of that lab at all.
    """
    try:
        st: LabState | None = LabState.open(name, base)
    except LabStateError:
        st = None
    if st is not None:
        namespaces = st.netns_names()
        procs = [(p["pid"], p.get("start_time")) for p in st.data.get("processes", [])]
    else:
        # state lost (e.g. /run/ipsecemu removed by hand): fall back to the naming scheme
        namespaces, procs = orphan_netns(name), []
        if not namespaces:
            raise LabStateError(f"no lab named '{name}' is up")
        say(f"lab {name}: no state recorded; removing netns by name: {', '.join(namespaces)}")
    stopped = stop_pids(procs)
    # anything else still running inside the lab (e.g. started by `lab exec ... &`)
    stray = [(p, None) for ns in namespaces for p in pids_in_netns(ns)]
    stopped += stop_pids(stray)
    removed = 0
    for ns in namespaces:
        if netns_exists(ns):
            try:
                netns.remove(ns)
                removed += 1
            except OSError as exc:
                say(f"warning: cannot remove netns {ns}: {exc}")
    if st is not None:
        for d in st.data.get("extra_dirs", []):  # e.g. charon instance dirs, kept outside /run
            if d.startswith("/tmp/ipsecemu-"):  # never follow a hand-edited state file elsewhere
                shutil.rmtree(d, ignore_errors=True)
        st.remove()
    say(f"lab {name}: removed {removed} netns, stopped {stopped} processes")
    return {"netns": removed, "processes": stopped}
