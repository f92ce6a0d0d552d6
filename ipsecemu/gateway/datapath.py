"""One connection's data path: its tun device, routes, inbound SA table, outbound SA and the
forwarder that moves packets between the tun and the wire.

Fast path: the C batch loop (``native.gateway_loop.EspUdpLoop``) on its own thread, over the connection's
own socket connected to the peer (ESP-in-UDP on 4500, or raw IP protocol 50); no Python runs
per data packet.  The loop borrows the SA objects, so
every SA change (install, rekey, delete) holds the running loop between batches
(``EspUdpLoop.paused``), edits the table and switches its outbound SA in place; packets arriving
meanwhile wait in the kernel queues (tun/socket), so a make-before-break rekey loses nothing and
adds no stop/start.  Only a new socket or peer address restarts the loop.  On the C path the
tun is opened with IFF_VNET_HDR: the loop takes TCP super-packets from the kernel (TSO), cuts
them itself and writes coalesced ones back (GRO); the slow path strips/adds the 10-byte header.

Slow path (logged loudly as "slow path"): raw ESP (IP protocol 50) when the built C loop lacks
that mode, SAs whose algorithm has no C implementation (e.g. ChaCha20, HMAC-MD5), or the C module
not built (``--backend reference``).  There Python encapsulates per packet through the same backend objects.

Several Child SAs under one IKE SA (e.g. charon with two children of different traffic
selectors): each child is a *lineage* (its SA and the SAs that rekey it) with its own selectors.
The loop gets one outbound policy per live lineage (``EspUdpLoop.set_out_policy``): a packet
from the tun leaves on the SA whose selectors hold its source and destination (protocol and
ports included; the most specific lineage first), and a packet no child covers is a counted
drop (``no_policy``).  Every inbound SA has its selectors too (``set_in_policy``): a
decapsulated packet outside them is a counted drop (``ts_drop``, RFC 4301 section 5.2).  The
routes are the union of the live children's; a child's routes go only when no other needs them.

Transport-mode Child SAs (RFC 4303 §3.1.1) are framed as such on both paths: the IP header of a
packet from the tun is dropped (the socket writes the outer one) and its protocol is the ESP next
header; decapsulated data gets a header peer -> local back (selectors are checked after that).

On demand (``start_action: trap``, :meth:`ConnectionDatapath.arm_trap`): the tun and the
connection's routes exist from the start, before any SA.  While no Child SA exists, Python reads
the tun: a packet inside the configured selectors is queued (:mod:`trapq`, bounded) and reported
(``on_trigger``: the daemon initiates); one outside them is a counted drop.  The first SA takes
the queue (encapsulated through it in order, before the C loop starts), then the C loop reads the
tun.  When the last SA goes, Python reads the tun again.  Routes come from :mod:`routes` (the
issue-12 rules: never our own address or selectors; transport mode: the peer's host route in the
connection's own table).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import EspSaConfig, Lifetime, SaCounters, Verdict
from ipsecemu.config.gateway import GatewayConnection, Network
from ipsecemu.dataplane import BackendUnavailable
from ipsecemu.dataplane import backend as dataplane_backend
from ipsecemu.dataplane.selectors import (
    PacketSelectors,
    fits_inbound,
    fits_outbound,
    packet_selectors,
    pick_outbound,
)
from ipsecemu.esp import framing
from ipsecemu.ike.events import ChildSaKeys
from ipsecemu.ike.ts import TrafficSelector
from ipsecemu.net.netns import netlink
from ipsecemu.net.tun import VNET_HDR, clear_offload, open_tun

from .routes import RoutePlan, plan_routes
from .trapq import TrapQueue

log = logging.getLogger(__name__)

__all__ = ["ConnectionDatapath", "Port", "loop_supports_raw"]

GRACE = 1.0  # seconds a replaced SA's inbound stays for packets already in flight
# Soft byte limit headroom: a rekey (detection, CREATE_CHILD_SA with PFS, install on both sides)
# takes a few ms to tens of ms on a busy box; at line rate the negotiated 10% margin of a small
# lifetime lasts less than that, so a new SA's soft limit leaves this many seconds at the rate its
# predecessor carried (Azure's 102400000 KB lifetimes keep their 90%).
REKEY_HEADROOM_S = 0.03
# The inbound SA keeps decrypting past its hard limit, up to this factor: the peer's outbound
# enforces the limit, and what it sent just before switching to the new SA is still in flight.
INBOUND_HARD_SLACK = 2
# seconds after which a rekeyed SA takes the outbound without a sign that the peer has it (its
# DELETE of the old SA, or traffic on the new inbound): only for a peer that never deletes.  It
# was 2 s, shorter than one lost answer's retransmission (4 s, 7.2 s ...): under loss the
# responder then sent on an SA the initiator did not have yet (the lossy-link campaign, issue #13)
PROMOTE_AFTER = 30.0


@dataclass(eq=False)
class Port:
    """A socket ESP travels on (the NAT-T UDP socket, or a raw IP protocol 50 socket) for one
    local address; at most one connection's C loop reads it at a time."""

    fd: int
    pause: Callable[[], None]  # stop asyncio reading it (the C loop reads it then)
    resume: Callable[[], None]
    send: Callable[[bytes, tuple[str, int]], None]  # slow path: one ESP packet (SPI onward)
    close: Callable[[], None]  # stop reading it and close it
    raw: bool = False
    ike_fd: int = -1  # UDP: where the C loop hands IKE datagrams (the daemon reads the other end)
    owner: str | None = None  # connection whose C loop reads the socket
    key: object = None  # what the socket was made for (encapsulation, peer)


def loop_supports_raw() -> bool:
    """Whether the built C module's loop has the raw ESP (protocol 50) mode."""
    try:
        from ipsecemu.dataplane.native.cmodule import ffi  # lazy: the C module may not be built (then: False)

        return "raw_esp" in dict(ffi.typeof("ie_loop_cfg").fields)
    except Exception:
        return False


@dataclass
class _Child:
    inbound: EspSaConfig
    outbound: EspSaConfig
    keys: ChildSaKeys
    out_sa: Any
    installed: float
    lineage: int = 0  # the logical child: a rekey keeps it, a new CREATE_CHILD_SA gets its own
    soft_fired: bool = False
    pending: bool = False  # rekeyed in, outbound not switched yet
    routes: list[Network] = field(default_factory=list)

    @property
    def ts(self) -> str:
        k = self.keys
        return f"{','.join(map(str, k.local_ts))} === {','.join(map(str, k.remote_ts))}"


def _span(sels: tuple[TrafficSelector, ...]) -> int:
    """How much a selector list covers: the narrower child's policy is looked at first."""
    return sum((int(t.end_addr) - int(t.start_addr) + 1) * (t.end_port - t.start_port + 1) * (1 if t.ip_proto else 256)
               for t in sels)


class ConnectionDatapath:
    """Tun + SAs + forwarder of one gateway connection (all calls from the asyncio thread)."""

    def __init__(self, gw: GatewayConnection, *, batch: int = 32, backend: str = "auto") -> None:
        self.gw = gw
        self.batch = batch
        try:
            self.dp = dataplane_backend(backend)
        except BackendUnavailable:
            self.dp = dataplane_backend("reference")
        self.native = self.dp.__name__.endswith("native")
        self.table = self.dp.EspInboundTable()
        self.children: dict[int, _Child] = {}  # inbound SPI -> child
        self.current: _Child | None = None  # the newest active child (its peer address drives the loop)
        self.active: dict[int, _Child] = {}  # lineage -> the child whose outbound SA carries its traffic
        self._in_sel: dict[int, tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]] = {}
        self._pushed_out = 0  # outbound policy slots set in the running loop
        self._pushed_in: set[int] = set()  # inbound SPIs whose selectors the running loop has
        self.tun_fd: int | None = None
        self._loop_obj: Any = None  # EspUdpLoop while the C loop runs
        self._loop_key: tuple[int, tuple[str, int]] | None = None  # (socket fd, peer) it was made for
        self._slow_send: Callable[[bytes, tuple[str, int]], None] | None = None
        self._slow_reader = False
        self._port: Port | None = None
        self.routes: set[Network] = set()
        self.mode = "idle"  # "native" | "slow" | "idle"
        self.slow_counters: dict[str, int] = {}
        self._stats_acc: dict[str, int] = {}
        self._retiring: set[int] = set()  # replaced SAs whose inbound lingers for GRACE
        self._restarts = 0
        self._starts = 0  # C loops started: SA changes no longer add any
        self.vnet = 0  # bytes of virtio_net_hdr before every packet on our tun (0: none)
        # called on the asyncio thread as soon as the C loop reports an expire event (eventfd)
        self.on_limit: Callable[[], None] | None = None
        self._evfd: int | None = None
        # on demand (start_action trap): the queue, the routes that exist before any SA, whether
        # the clear fallback took them away, and the daemon's hook for a packet that needs an SA
        self.trap: TrapQueue | None = None
        self.trap_routes: list[Network] = []
        self.trap_released = False
        self.on_trigger: Callable[[PacketSelectors], None] | None = None
        self._prefsrc: str | None = None  # transport mode: our address on the routes
        self._said: set[str] = set()  # route warnings already logged

    # -- tun and routes ----------------------------------------------------------------
    def ensure_tun(self) -> None:
        if self.tun_fd is not None:
            return
        t = self.gw.tunnel
        # with the C loop, IFF_VNET_HDR: it gets TCP super-packets (TSO) and cuts them itself
        self.tun_fd = open_tun(t.name, vnet_hdr=self.native)
        self.vnet = VNET_HDR if self.native else 0

        def setup(ipr: Any) -> None:
            idx = ipr.link_lookup(ifname=t.name)[0]
            ipr.link("set", index=idx, mtu=t.mtu, state="up")
            if t.address is not None:  # replace: a lab may have made the tun, with this address, already
                ipr.addr("replace", index=idx, address=str(t.address.ip), prefixlen=t.address.network.prefixlen)

        try:
            netlink(None, setup)
        except BaseException:
            os.close(self.tun_fd)
            self.tun_fd = None
            raise
        log.info("%s: tun %s up (mtu %d)", self.gw.name, t.name, t.mtu)

    def _wanted_routes(self, keys: ChildSaKeys) -> list[Network]:
        return self._use_plan(plan_routes(self.gw.tunnel, mode=keys.mode, local_addr=keys.local[0],
                                          remote_addr=keys.remote[0], local_ts=keys.local_ts,
                                          remote_ts=keys.remote_ts), keys.remote[0])

    def _use_plan(self, plan: RoutePlan, peer: str) -> list[Network]:
        for why in plan.skipped:
            if why not in self._said:  # once per reason: rekeys would repeat it
                self._said.add(why)
                log.warning("%s: peer %s: not routing %s into %s", self.gw.name, peer, why, self.gw.tunnel.name)
        if plan.prefsrc is not None:
            self._prefsrc = plan.prefsrc
        return list(plan.nets)

    def _set_routes(self, nets: list[Network]) -> None:
        want = set(nets)
        add, drop = want - self.routes, self.routes - want
        if not add and not drop:
            return
        name, table = self.gw.tunnel.name, getattr(self.gw.tunnel, "table", None)
        where: dict[str, Any] = {"table": table} if table else {}
        src = self._prefsrc

        def do(ipr: Any) -> None:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return
            for n in add:
                extra = {"prefsrc": src} if src and ipaddress.ip_address(src).version == n.version else {}
                ipr.route("replace", dst=str(n), oif=idx[0], **where, **extra)
            for n in drop:
                try:
                    ipr.route("del", dst=str(n), oif=idx[0], **where)
                except Exception:  # already gone (link down, admin removed it)
                    pass

        netlink(None, do)
        self.routes = want
        in_table = f" (table {table})" if table else ""
        if add:
            log.info("%s: routes %s -> %s%s", self.gw.name, ", ".join(map(str, sorted(add, key=str))), name, in_table)
        if drop:
            log.info("%s: routes removed%s: %s", self.gw.name, in_table, ", ".join(map(str, sorted(drop, key=str))))

    # -- on demand (start_action trap) ---------------------------------------------------
    def arm_trap(self) -> None:
        """Before any SA: the tun, the configured selectors' routes, and Python reading the tun."""
        conn = self.gw.conn
        assert conn.local_address is not None and conn.remote_address is not None  # config checks
        self.trap = self.trap or TrapQueue()
        self.ensure_tun()
        self.trap_routes = self._use_plan(plan_routes(
            self.gw.tunnel, mode=conn.mode, local_addr=str(conn.local_address), remote_addr=str(conn.remote_address),
            local_ts=conn.local_ts, remote_ts=conn.remote_ts), str(conn.remote_address))
        self.trap_released = False
        self._set_routes(self._all_routes())
        self._read_trapped()
        log.info("%s: trap armed for %s <-> %s with %s (fallback %s)", self.gw.name,
                 ",".join(map(str, conn.local_ts)), ",".join(map(str, conn.remote_ts)), conn.remote_address,
                 conn.trap_fallback)

    def trap_release(self, why: str) -> None:
        """The clear fallback: the routes go (the host's policy routing falls through to the main
        table: clear), queued packets with them; they come back with the next SA."""
        if self.trap is None or self.trap_released:
            return
        self.trap_released = True
        n = self.trap.discard()
        self._set_routes(self._all_routes())
        log.warning("%s: peer %s: no SA (%s): routes removed, traffic goes in clear (trap_fallback clear; "
                    "%d queued packets dropped)", self.gw.name, self.gw.conn.remote_address, why, n)

    def _read_trapped(self) -> None:
        """Python reads the tun while no SA exists (the C loop's offloads off again: plain packets)."""
        if self.trap is None or self.current is not None or self.tun_fd is None:
            return
        if self.vnet:
            clear_offload(self.tun_fd)
        if not self._slow_reader:
            os.set_blocking(self.tun_fd, False)
            asyncio.get_running_loop().add_reader(self.tun_fd, self._on_tun)
            self._slow_reader = True

    def _trapped(self, pkt: bytes) -> None:
        """A packet in the tun while no SA exists: queue it and ask for one, or drop it (counted)."""
        assert self.trap is not None
        conn = self.gw.conn
        p = packet_selectors(pkt)
        if p is None or not fits_outbound(p, conn.local_ts, conn.remote_ts):
            self._count("trap_no_policy")  # outside the connection's selectors: never triggers
            return
        if self.trap_released:  # a packet routed here anyway (a stale route cache): not in clear either
            self._count("trap_released_drop")
            return
        self.trap.push(pkt)
        if self.on_trigger is not None:
            self.on_trigger(p)

    def _flush_trapped(self) -> None:
        """The new SA takes what waited for it, oldest first (inside a pause: the loop starts after)."""
        if self.trap is None or not len(self.trap):
            return
        send = self._slow_send or (self._port.send if self._port is not None else None)
        pkts = self.trap.take()
        if send is None:
            self.trap.discarded += len(pkts)
            return
        for pkt in pkts:
            self._encap_send(pkt, send)
        log.info("%s: %d queued packets sent through the new SA", self.gw.name, len(pkts))

    # -- SA changes (IKE events) ---------------------------------------------------------
    def install(self, keys: ChildSaKeys, now: float, port: Port | None, *, rekey: bool = False,
                we_started: bool = False, old_inbound_spi: int | None = None) -> None:
        """A new Child SA (installed before the IKE message that completes it leaves).  First SA,
        or a rekey we started (the peer installed it before answering): it carries traffic at
        once.  A rekey the peer started: its inbound goes in now, the outbound stays on the old
        SA until the peer deletes that one (by then the peer has the new SA), the new inbound
        sees traffic, or PROMOTE_AFTER passes (make-before-break, as strongSwan's responder)."""
        self.ensure_tun()
        lineage = self._lineage_for(keys, rekey, old_inbound_spi)
        inbound, outbound = self._limits(keys, now, self.active.get(lineage))
        child = _Child(inbound, outbound, keys, self.dp.EspOutbound(outbound), now)
        child.lineage = lineage
        child.pending = rekey and not we_started and child.lineage in self.active
        with self._paused():
            self.table.add(inbound)
            self.children[keys.inbound.spi] = child
            self._in_sel[keys.inbound.spi] = (keys.local_ts, keys.remote_ts)
            if not child.pending:
                self.active[child.lineage] = child
                self.current = child
                self._choose_path(keys, port)
                self._flush_trapped()
        child.routes = self._wanted_routes(keys)
        self.trap_released = False
        self._set_routes(self._all_routes())
        log.info("%s: child %d (%s) with %s: installed SA in %08x out %08x (%s, %s%s, %s path%s)", self.gw.name,
                 child.lineage, child.ts, keys.remote[0], keys.inbound.spi, keys.outbound.spi, keys.proposal,
                 "transport mode, " if keys.mode == "transport" else "", "ESP-in-UDP" if keys.encap else "ESP",
                 self.mode,
                 ", outbound after the old SA goes" if child.pending else "")

    def _lineage_for(self, keys: ChildSaKeys, rekey: bool, old_inbound_spi: int | None) -> int:
        """A rekey continues its old SA's child; a new child takes the lowest free number."""
        old = self.children.get(old_inbound_spi or 0)
        if rekey and old is not None:
            return old.lineage
        if rekey:  # the old SA is unknown here: the child with the same selectors
            for ch in self.children.values():
                if (ch.keys.local_ts, ch.keys.remote_ts) == (keys.local_ts, keys.remote_ts):
                    return ch.lineage
        used = {ch.lineage for ch in self.children.values()}
        return next(i for i in range(1, len(used) + 2) if i not in used)

    def _all_routes(self) -> list[Network]:
        out: list[Network] = []
        for ch in self.children.values():
            out += [n for n in ch.routes if n not in out]
        if self.trap is not None and not self.trap_released:  # on demand: they stay without an SA
            out += [n for n in self.trap_routes if n not in out]
        return out

    def _limits(self, keys: ChildSaKeys, now: float, cur: _Child | None) -> tuple[EspSaConfig, EspSaConfig]:
        """The SA configs as installed: the soft byte limit moved earlier when the SA this one
        replaces carried so much per second that the negotiated margin would not last a rekey
        (REKEY_HEADROOM_S), on the connection's initiator moved earlier at random so that the
        peers do not rekey at once (SaLifetime.jittered_soft), and the inbound hard limit relaxed
        (INBOUND_HARD_SLACK)."""
        rate = 0.0  # of the SA this one replaces (``cur``: its child's live SA)
        if cur is not None:
            cin, cout = self.counters(cur.inbound.spi)
            rate = max(cin.bytes, cout.bytes) / max(now - cur.installed, 0.01)
        out = []
        # jitter (resil2): the initiator rekeys at random before the other side, which waits
        life, first, r = self.gw.conn.child_lifetime, self.gw.conn.start_action == "initiate", random.random()
        moved = False
        for cfg in (keys.inbound, keys.outbound):
            lt = cfg.lifetime
            soft = lt.soft_bytes
            if lt.hard_bytes and rate:
                soft = max(1, min(soft or lt.hard_bytes, int(lt.hard_bytes - rate * REKEY_HEADROOM_S)))
                moved = moved or soft != lt.soft_bytes
            soft = life.jittered_soft(soft, lt.hard_bytes, r, first, rate * REKEY_HEADROOM_S)
            soft_p = life.jittered_soft(lt.soft_packets, lt.hard_packets, r, first)
            hard_b, hard_p = lt.hard_bytes, lt.hard_packets
            if cfg is keys.inbound:
                hard_b, hard_p = hard_b * INBOUND_HARD_SLACK, hard_p * INBOUND_HARD_SLACK
            new = Lifetime(soft_bytes=soft, hard_bytes=hard_b, soft_packets=soft_p, hard_packets=hard_p)
            out.append(cfg if new == lt else dataclasses.replace(cfg, lifetime=new))
        if moved:
            log.info("%s: SA %08x: soft limit at %d of %d bytes (%.1f MB/s)", self.gw.name, keys.inbound.spi,
                     out[1].lifetime.soft_bytes, keys.outbound.lifetime.hard_bytes, rate / 1e6)
        return out[0], out[1]

    def _switch_to(self, child: _Child | None) -> None:
        """``child`` takes its lineage's outbound (and becomes current); None: nothing is left."""
        with self._paused():
            if child is not None:
                child.pending = False
                self.active[child.lineage] = child
            self.current = child
            if child is None:
                self.active.clear()
                self._stop_slow()
                self.mode = "idle"
                self._release_port()
        if child is None:
            self._read_trapped()  # on demand: the next packet asks for a new SA

    def watchdog(self) -> None:
        """Tick: restart a C loop that ended by itself (a fatal poll error, e.g. its tun gone).
        ICMP errors on the socket (the peer restarting) no longer end it: the loop clears and
        counts them (sock_errors)."""
        lo = self._loop_obj
        if lo is None or lo.result is None or self._port is None:
            return
        with socket.socket(fileno=os.dup(self._port.fd)) as s:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._restarts += 1
        log.warning("%s: C loop stopped (%d, socket error %s); restarting it", self.gw.name, lo.result,
                    os.strerror(err) if err else "none")
        with self._paused():
            pass

    def promote(self, now: float) -> None:
        """Tick: move the outbound to a pending rekeyed SA once the peer evidently uses it."""
        for spi, ch in list(self.children.items()):
            if ch.pending and (now - ch.installed >= PROMOTE_AFTER or self.table.counters_for(spi).packets > 0):
                log.info("%s: child %d (%s) with %s: outbound now on %08x", self.gw.name, ch.lineage, ch.ts,
                         ch.keys.remote[0], ch.outbound.spi)
                self._switch_to(ch)

    def remove(self, inbound_spi: int) -> bool:
        """Remove one Child SA.  If others remain (a rekey), its inbound lingers for GRACE seconds
        for packets the peer sent before it switched; the last one takes the routes with it."""
        child = self.children.pop(inbound_spi, None)
        if child is None:
            return False
        if self.active.get(child.lineage) is child:
            # the newest remaining SA of the same child (a rekey) takes over its outbound
            heir = max((c for c in self.children.values() if c.lineage == child.lineage),
                       key=lambda c: c.installed, default=None)
            if heir is not None:
                self._switch_to(heir)
            else:
                with self._paused():
                    del self.active[child.lineage]
        if self.current is child:
            nxt = max(self.active.values(), key=lambda c: c.installed, default=None)
            self._switch_to(nxt)
        if self.children:
            self._retiring.add(inbound_spi)
            asyncio.get_running_loop().call_later(GRACE, self._drop_inbound, inbound_spi)
            self._set_routes(self._all_routes())
        else:
            self._drop_inbound(inbound_spi)
            self._set_routes(self._all_routes())
        log.info("%s: child %d (%s) with %s: removed SA in %08x out %08x", self.gw.name, child.lineage, child.ts,
                 child.keys.remote[0], inbound_spi, child.outbound.spi)
        return True

    def _drop_inbound(self, spi: int) -> None:
        self._retiring.discard(spi)
        if spi in self.children or self.tun_fd is None:
            return
        with self._paused():
            self._in_sel.pop(spi, None)
            try:
                self.table.remove(spi)
            except (KeyError, ConfigError, ValueError):
                pass

    def remove_all(self) -> None:
        for spi in list(self.children):
            self.remove(spi)

    def close(self) -> None:
        if self.trap is not None:
            self.trap.discard()
            self.trap_routes = []
        self.remove_all()
        self._stop_loop()
        self._close_wakeup()
        self._stop_slow()
        self._release_port()
        if self.tun_fd is not None:
            os.close(self.tun_fd)  # the last fd: the kernel deletes the tun and its routes (a lab's
            # persistent BGP tun stays, without carrier: our routes into it went with remove_all)
            self.tun_fd = None
            self.vnet = 0
            self.routes.clear()
            log.info("%s: tun %s removed", self.gw.name, self.gw.tunnel.name)

    # -- forwarding ----------------------------------------------------------------------
    class _Pause:
        def __init__(self, dp: ConnectionDatapath) -> None:
            self.dp = dp
            self.held: Any = None

        def __enter__(self) -> None:
            lo = self.dp._loop_obj
            if lo is not None and lo.result is None:  # running: hold it between batches
                self.held = lo.paused()
                self.held.__enter__()
            else:
                self.dp._stop_loop()

        def __exit__(self, *exc: object) -> None:
            dp = self.dp
            if self.held is not None:
                lo, held, self.held, cur = dp._loop_obj, self.held, None, dp.current
                same = (dp.mode == "native" and cur is not None and dp._port is not None
                        and dp._loop_key == (dp._port.fd, dp._loop_peer()))
                try:
                    if same and cur is not None and lo.outbound is not cur.out_sa:  # cur: checked in same
                        lo.set_outbound(cur.out_sa)
                    if same:
                        dp._push_policies(lo)
                finally:
                    held.__exit__(*exc)
                if same:
                    return
                dp._stop_loop()  # another socket or peer: a new loop
            if dp.mode == "native" and dp.current is not None:
                dp._start_loop()

    def _paused(self) -> ConnectionDatapath._Pause:
        """Hold the C loop (it borrows the SAs) between batches while the block edits them, then
        switch its outbound SA live; stop and restart it only for a new socket or peer."""
        return ConnectionDatapath._Pause(self)

    def _ordered(self) -> list[_Child]:
        """Live children, the narrowest selectors first (a packet goes to the most specific)."""
        return sorted(self.active.values(), key=lambda c: (_span(c.keys.remote_ts), _span(c.keys.local_ts), c.lineage))

    def _push_policies(self, lo: Any) -> None:
        """Bring the (paused or not yet started) C loop's policies in line with the children."""
        order = [c for c in self._ordered() if c.out_sa._sa is not None]
        for i, ch in enumerate(order):
            lo.set_out_policy(i, ch.out_sa, ch.keys.local_ts, ch.keys.remote_ts)
        for i in range(len(order), self._pushed_out):
            lo.set_out_policy(i, None)
        self._pushed_out = len(order)
        for spi in self._pushed_in - set(self._in_sel):
            lo.del_in_policy(spi)
        pushed = set(self._in_sel)
        for spi, (local, remote) in self._in_sel.items():
            if spi not in self._pushed_in:
                try:
                    lo.set_in_policy(spi, local, remote)
                except ConfigError as exc:  # the loop's table is full (a rekey storm): never fail the install
                    pushed.discard(spi)
                    self._count("in_policy_full")
                    log.warning("%s: SA %08x: inbound selectors not checked in the C loop: %s", self.gw.name, spi, exc)
        self._pushed_in = pushed

    def _release_port(self) -> None:
        if self._port is not None and self._port.owner == self.gw.name:
            self._port.owner = None  # asyncio reads the socket again
            self._port.resume()
        self._port = None

    def _choose_path(self, keys: ChildSaKeys, port: Port | None) -> None:
        why = ""
        if port is None:
            why = "there is no socket for this encapsulation"
        elif not self.native:
            why = "the data plane is the Python reference (--backend reference, or the C module is not built)"
        elif port.raw and not loop_supports_raw():
            why = "the built C loop has no raw ESP (protocol 50) mode"
        elif not self.dp.native_esp_supported(keys.outbound):
            why = f"{keys.outbound.encr}/{keys.outbound.integ or 'aead'} has no C implementation"
        elif slow := [c for c in self.active.values() if not self.dp.native_esp_supported(c.outbound)]:
            # one loop carries every child of the connection: a child the C loop cannot encrypt
            # keeps the whole connection on the slow path (else its packets would be no_policy)
            why = f"child {slow[0].lineage} uses {slow[0].outbound.encr}, which has no C implementation"
        elif port.owner not in (None, self.gw.name):
            why = f"the socket is already driven by {port.owner}'s C loop"
        if self._port is not None and self._port is not port:
            self._release_port()
        if not why:
            assert port is not None
            self._stop_slow()
            port.owner = self.gw.name
            self._port = port
            self.mode = "native"
            return
        self.mode = "slow"
        log.warning("%s: slow path: Python encapsulates every packet because %s", self.gw.name, why)
        if port is not None:
            self._start_slow(port.send)

    def _start_loop(self) -> None:
        assert self.current is not None and self._port is not None and self.tun_fd is not None
        from ipsecemu.dataplane.native.gateway_loop import EspUdpLoop  # lazy: C module built here

        port = self._port
        port.pause()
        kw: dict[str, Any] = {"raw_esp": True} if port.raw else {}
        if self.current.keys.mode == "transport":  # RFC 4303 3.1.1 framing: no inner IP header
            kw.update(transport=True, local=self.current.keys.local[0])
        try:
            remote = self._loop_peer()
            self._loop_key = (port.fd, remote)
            self._loop_obj = EspUdpLoop(tun_fd=self.tun_fd, udp_fd=port.fd, peer=remote,
                                               outbound=self.current.out_sa, inbound=self.table,
                                               ike_fd=port.ike_fd, batch=self.batch, mtu=self.gw.tunnel.mtu,
                                               poll_ms=20, tun_vnet=bool(self.vnet), **kw)
            self._pushed_out, self._pushed_in = 0, set()
            self._push_policies(self._loop_obj)
            if self.on_limit is not None:
                self._loop_obj.set_wakeup(self._wakeup_fd())
            self._loop_obj.start()
            self._starts += 1
            log.info("%s: C loop started on fd %d to %s", self.gw.name, port.fd, remote[0])
        except Exception as exc:  # a C module older than its wrapper, a refused fd: keep forwarding
            log.error("%s: the C loop did not start (%s: %s); slow path: Python forwards every packet",
                      self.gw.name, type(exc).__name__, exc)
            self._loop_obj = None
            port.owner = None
            port.resume()
            self._port = None
            self.mode = "slow"
            self._start_slow(port.send)

    def _wakeup_fd(self) -> int:
        """The eventfd the C loop writes when an SA crosses a limit; read on the asyncio loop."""
        if self._evfd is None:
            self._evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            asyncio.get_running_loop().add_reader(self._evfd, self._on_wakeup)
        return self._evfd

    def _on_wakeup(self) -> None:
        assert self._evfd is not None  # the reader exists only with the fd
        try:
            os.eventfd_read(self._evfd)
        except BlockingIOError:
            pass
        if self._loop_obj is not None:
            for ev in self._loop_obj.events():  # which SA is told by the counters (soft_expired)
                log.debug("%s: C loop event %s", self.gw.name, ev)
        if self.on_limit is not None:
            self.on_limit()

    def _close_wakeup(self) -> None:
        if self._evfd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._evfd)
            except RuntimeError:
                pass
            os.close(self._evfd)
            self._evfd = None

    def _loop_peer(self) -> tuple[str, int]:
        assert self.current is not None
        remote = self.current.keys.remote
        if self._port is not None and self._port.raw:  # IPv6 raw sockets read the port as the protocol
            remote = (remote[0], 0)
        return remote

    def _stop_loop(self) -> None:
        if self._loop_obj is not None:
            self._loop_obj.stop()
            for k, v in self._loop_obj.stats.items():  # loops come and go with SA changes: keep totals
                self._stats_acc[k] = self._stats_acc.get(k, 0) + v
            self._loop_obj = None

    def _start_slow(self, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._slow_send = send
        if not self._slow_reader and self.tun_fd is not None:
            os.set_blocking(self.tun_fd, False)
            asyncio.get_running_loop().add_reader(self.tun_fd, self._on_tun)
            self._slow_reader = True

    def _stop_slow(self) -> None:
        self._slow_send = None
        if self._slow_reader and self.tun_fd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.tun_fd)
            except RuntimeError:
                pass
            self._slow_reader = False

    def _count(self, key: str) -> None:
        self.slow_counters[key] = self.slow_counters.get(key, 0) + 1

    def _on_tun(self) -> None:
        assert self.tun_fd is not None
        for _ in range(64):  # bounded so IKE is not starved
            try:
                pkt = os.read(self.tun_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._count("tun_error")
                return
            pkt = pkt[self.vnet:]  # no offloads while no C loop runs: a plain packet behind it
            if self.current is None and self.trap is not None and pkt:
                self._trapped(pkt)
                continue
            if self.current is None or self._slow_send is None or not pkt:
                self._count("no_sa")
                continue
            self._encap_send(pkt, self._slow_send)

    def _encap_send(self, pkt: bytes, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        """Slow path: one packet from the tun onto the SA whose selectors hold it (counted)."""
        order = self._ordered()
        i = pick_outbound(pkt, [(c.keys.local_ts, c.keys.remote_ts) for c in order])
        if i is None:
            self._count("no_policy")
            return
        cur = order[i]
        if cur.keys.mode == "transport":  # RFC 4303 3.1.1: the socket writes the IP header
            try:
                _hdr, proto, data = framing.split_transport(pkt)
            except framing.FramingError:
                self._count("encap_bad_header")
                return
            verdict, esp = cur.out_sa.encap(data, proto)
        else:
            verdict, esp = cur.out_sa.encap(pkt, 41 if pkt[0] >> 4 == 6 else 4)
        if verdict != Verdict.OK:
            self._count(f"encap_{Verdict(verdict).name.lower()}")
            return
        send(esp, cur.keys.remote)
        self._count("esp_tx")

    def slow_input(self, esp: bytes) -> None:
        """Slow path: one ESP packet (SPI onward) from the wire."""
        res = self.table.decap(esp)
        if res.verdict != Verdict.OK:
            self._count(f"decap_{Verdict(res.verdict).name.lower()}")
            return
        payload = res.payload
        child = self.children.get(res.spi)
        if child is not None and child.keys.mode == "transport":  # put the IP header back
            payload = framing.build_ip(child.keys.remote[0], child.keys.local[0], res.next_header, payload)
            if child.keys.encap:  # RFC 3948 3.1.3: the sender summed its own (pre-NAT) addresses
                payload = framing.fix_l4_checksum(payload)
        sel = self._in_sel.get(res.spi or int.from_bytes(esp[:4], "big"))
        if sel is not None:
            p = packet_selectors(payload)
            if p is None or not fits_inbound(p, *sel):
                self._count("ts_drop")
                return
        self._count("esp_ok")
        if self.tun_fd is not None:
            try:
                os.write(self.tun_fd, bytes(self.vnet) + payload)
            except OSError:
                self._count("tun_error")

    # -- views -----------------------------------------------------------------------------
    def lineage_of(self, spi: int) -> int | None:
        ch = self.children.get(spi)
        return ch.lineage if ch is not None else None

    def policies(self) -> list[dict[str, Any]]:
        """The live children in lookup order: which SA each one's traffic leaves on."""
        return [{"child": c.lineage, "local_ts": [str(t) for t in c.keys.local_ts],
                 "remote_ts": [str(t) for t in c.keys.remote_ts], "spi_out": f"{c.outbound.spi:08x}",
                 "spi_in": f"{c.inbound.spi:08x}", "routes": sorted(str(r) for r in c.routes)}
                for c in self._ordered()]

    def has_spi(self, spi: int) -> bool:
        return spi in self.children or spi in self._retiring

    def counters(self, inbound_spi: int) -> tuple[SaCounters, SaCounters]:
        """(inbound, outbound) counters of one child; plain loads while the loop runs."""
        child = self.children[inbound_spi]
        return self.table.counters_for(inbound_spi), child.out_sa.counters

    def kernel_routes(self) -> list[str]:
        """What the kernel routes into our tun, in any table ("10.0.1.0/24 table 100"): with
        ``routes: external`` someone else installs them, and that is what carries traffic."""
        name = self.gw.tunnel.name

        def dump(ipr: Any) -> list[str]:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                return []
            out = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.route("dump", family=family):
                    oifs = {r.get_attr("RTA_OIF")} | {h.get("oif") for h in r.get_attr("RTA_MULTIPATH") or []}
                    table = r.get_attr("RTA_TABLE") or r["table"]
                    if idx[0] not in oifs or r["flags"] & 0x200 or table == 255:  # cached clones, local table
                        continue
                    dst = f"{r.get_attr('RTA_DST')}/{r['dst_len']}" if r.get_attr("RTA_DST") else "default"
                    out.append(dst if table == 254 else f"{dst} table {table}")
            return sorted(set(out))

        try:
            return netlink(None, dump)
        except Exception:  # noqa: BLE001 - a status answer: no routes shown beats no answer
            return []

    def loop_stats(self) -> dict[str, int]:
        out = dict(self._stats_acc)
        if self._loop_obj is not None:
            for k, v in self._loop_obj.stats.items():
                out[k] = out.get(k, 0) + v
        for k, v in self.slow_counters.items():
            out["slow_" + k] = v
        if self._restarts:
            out["loop_restarts"] = self._restarts
        out["loop_starts"] = self._starts
        return out

    def soft_expired(self) -> list[int]:
        """Inbound SPIs of children whose byte/packet soft limit was reached, or whose outbound
        sequence numbers are nearly used up (each reported once).  Plain counter loads: no
        events are popped from the SAs the C loop is driving."""
        out = []
        for spi, ch in self.children.items():
            if ch.soft_fired:
                continue
            cin, cout = self.counters(spi)
            for cfg, c in ((ch.inbound, cin), (ch.outbound, cout)):
                lt = cfg.lifetime
                if (lt.soft_bytes and c.bytes >= lt.soft_bytes) or (lt.soft_packets and c.packets >= lt.soft_packets):
                    ch.soft_fired = True
            last = (1 << 64) - 1 if ch.outbound.esn else (1 << 32) - 1
            if ch.outbound.seq_soft_margin and last - ch.out_sa.next_seq <= ch.outbound.seq_soft_margin:
                ch.soft_fired = True  # the sequence space runs out before any byte limit
            if ch.soft_fired:
                out.append(spi)
        return out
