"""On-demand connections (``start_action: trap``, strongSwan's name), the daemon's side.

At start each trap connection's data path is armed (tun + routes, Python reads the tun; see
``datapath.arm_trap``).  The first packet inside the connection's selectors starts IKE, with the
packet's own selectors first in TSi/TSr (RFC 7296 section 2.9, ``ike.ts.on_demand``); packets wait
in the connection's bounded queue meanwhile.  If no Child SA is up within ``trap_timeout`` seconds
(or the negotiation fails earlier: the peer refuses, authentication fails), the attempt is
abandoned, logged with connection, peer and reason, and retried after the gateway's back-off
(1 s .. 60 s): ``trap_fallback: clear`` removes the connection's routes meanwhile (the host's
policy routing falls through to the main table: clear text) and initiates again by itself;
``drop`` keeps them (nothing leaves in clear) and initiates again when traffic waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from ipsecemu.dataplane.selectors import PacketSelectors
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.events import ChildSaEstablished, ChildSaFailed, Event, IkeSaDeleted
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState
from ipsecemu.ike.ts import TrafficSelector, on_demand

from .driver import GatewayState, LocalAddress
from .timers import Backoff

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["TrapState", "Traps", "initiate_with"]


def initiate_with(ep: IkeEndpoint, name: str, local_ts: list[TrafficSelector], remote_ts: list[TrafficSelector],
                  now: float) -> IkeSa:
    """Initiate ``name`` with these Child SA selectors.  The core's ``initiate`` takes them from the
    connection's settings, so the new IKE SA gets a copy of those with the trigger's selectors
    first; it keeps that copy, a superset of the configured selectors, so narrowing a later child
    of the peer's gives the same answer."""
    base = ep.configs[name]
    ep.configs[name] = dataclasses.replace(base, local_ts=local_ts, remote_ts=remote_ts)
    try:
        return ep.initiate(name, now)
    finally:
        ep.configs[name] = base


@dataclass
class TrapState:
    """One trap connection's negotiation: running since when, the packet that started it."""

    pending: bool = False  # a triggered negotiation runs (no Child SA yet)
    attempt: int = 0  # numbers the attempts: a late timer of an old one does nothing
    started: float = 0.0
    trigger: PacketSelectors | None = None  # the last packet that asked for an SA
    waiting: bool = False  # traffic arrived while backing off: initiate when the back-off ends
    timer: asyncio.TimerHandle | None = None
    triggers: int = 0  # negotiations started by a packet
    failures: int = 0
    last_failure: str = ""


class Traps(GatewayState):
    """Mixin of :class:`~ipsecemu.gateway.daemon.Gateway`: arm, trigger, time out, fall back."""

    backoff: Backoff
    held: set[str]
    stopping: bool
    ike_conn: dict[bytes, str]
    traps: dict[str, TrapState]

    def _arm_traps(self) -> None:
        for c in self.cfg.connections:
            if c.conn.start_action != "trap":
                continue
            self.traps[c.name] = TrapState()
            dp = self.dps[c.name]
            dp.on_trigger = lambda p, name=c.name: self._trap_packet(name, p)
            dp.arm_trap()

    def _conn_sas(self, name: str) -> list[tuple[LocalAddress, IkeSa]]:
        return [(lo, sa) for lo in self.locals.values() for sa in lo.endpoint.sas.values()
                if sa.config.name == name and sa.state != IkeState.CLOSED]

    def _trap_packet(self, name: str, p: PacketSelectors) -> None:
        """A packet for ``name`` waits in its tun: start a negotiation unless one runs or we back off."""
        st = self.traps[name]
        st.trigger = p
        if st.pending or name in self.held or self.stopping:
            return
        retry = self.backoff.retries.get(name)
        if retry is not None and retry.next_at is not None:
            st.waiting = True  # the back-off timer initiates
            return
        self._trap_initiate(name)

    def _trap_initiate(self, name: str) -> None:
        gw = self.cfg.connection(name)
        assert gw is not None
        st = self.traps[name]
        conn, now = gw.conn, self.now()
        local_ts, remote_ts = list(conn.local_ts), list(conn.remote_ts)
        p = st.trigger
        if p is not None:
            local_ts, remote_ts = on_demand(local_ts, remote_ts, p.src, p.dst, p.proto, p.sport, p.dport)
        st.pending, st.waiting, st.started = True, False, now
        st.attempt += 1
        st.triggers += p is not None
        st.timer = self.loop.call_later(conn.trap_timeout, self._trap_timeout, name, st.attempt)
        what = (f"packet {p.src}:{p.sport or 0} -> {p.dst}:{p.dport or 0} proto {p.proto}" if p is not None
                else "retry")
        established = [(lo, sa) for lo, sa in self._conn_sas(name) if sa.state == IkeState.ESTABLISHED]
        try:
            if established:  # the IKE SA is up, its Child SA went: a new one (CREATE_CHILD_SA)
                lo, sa = established[0]
                sa.create_child(now, local_ts, remote_ts)
                lo.transport.pump()
                log.info("%s: trap: %s: new Child SA with %s", name, what, conn.remote_address)
                return
            if self._conn_sas(name):  # an IKE SA is being set up already (e.g. the peer initiated)
                return
            lo = self.locals[str(conn.local_address)]
            sa = initiate_with(lo.endpoint, name, local_ts, remote_ts, now)
        except LocalProtocolError as exc:
            self._trap_failed(name, f"initiate failed: {exc}")
            return
        self.ike_conn[sa.spi_i] = name
        lo.transport.pump()
        log.info("%s: trap: %s: initiating to %s (TSi %s, TSr %s)", name, what, conn.remote_address,
                 ",".join(map(str, local_ts)), ",".join(map(str, remote_ts)))

    def _trap_event(self, ev: Event) -> None:
        """IKE events that end a trap connection's negotiation (success or failure)."""
        st = self.traps.get(ev.conn)
        if st is None or not st.pending:
            return
        if isinstance(ev, ChildSaEstablished):
            st.pending = False
            if st.timer is not None:
                st.timer.cancel()
            self.backoff.succeeded(ev.conn)
            log.info("%s: trap: Child SA up with %s after %.2f s", ev.conn, ev.peer[0], self.now() - st.started)
        elif isinstance(ev, ChildSaFailed) and ev.requested:
            self._trap_failed(ev.conn, ev.reason)
        elif isinstance(ev, IkeSaDeleted) and ev.reason not in ("rekeyed", "local"):
            self._trap_failed(ev.conn, f"IKE SA {ev.reason}" + (f": {ev.detail}" if ev.detail else ""))

    def _trap_timeout(self, name: str, attempt: int) -> None:
        st = self.traps[name]
        if st.pending and st.attempt == attempt:
            gw = self.cfg.connection(name)
            self._trap_failed(name, f"no Child SA within trap_timeout {gw.conn.trap_timeout if gw else '?'} s")

    def _trap_failed(self, name: str, why: str) -> None:
        """Give this attempt up: abandon a half-made IKE SA, fall back, retry after the back-off."""
        st = self.traps[name]
        if not st.pending:
            return
        st.pending = False
        if st.timer is not None:
            st.timer.cancel()
        st.failures += 1
        st.last_failure = why
        now = self.now()
        for lo, sa in self._conn_sas(name):
            if sa.state != IkeState.ESTABLISHED or not sa.children:
                sa.delete(now)  # not up yet: closed without a word; up without a child: deleted
                lo.transport.pump()
        gw = self.cfg.connection(name)
        assert gw is not None
        dp = self.dps[name]
        if dp.current is not None:  # an SA came up after all (a race with the timer)
            return
        delay = self.backoff.failed(name, now, why)
        if gw.conn.trap_fallback == "clear":
            dp.trap_release(why)
        else:
            n = dp.trap.discard() if dp.trap is not None else 0
            log.warning("%s: peer %s: no SA (%s): traffic dropped, never sent in clear (trap_fallback drop; %d "
                        "queued packets dropped)", name, gw.conn.remote_address, why, n)
        log.info("%s: trap: next attempt in %.1f s (failure %d)", name, delay, self.backoff.retries[name].attempts)
        self.loop.call_later(delay, self._trap_retry, name)

    def _trap_retry(self, name: str) -> None:
        self.backoff.started(name)
        st = self.traps[name]
        gw = self.cfg.connection(name)
        if self.stopping or name in self.held or st.pending or gw is None or self.dps[name].current is not None:
            return
        # clear: no route brings packets any more, so try by ourselves; drop: when traffic waits
        if gw.conn.trap_fallback == "clear" and not st.waiting:
            st.trigger = None  # an old packet: the configured selectors only
            self._trap_initiate(name)
        elif st.waiting:
            self._trap_initiate(name)

    def trap_view(self, name: str) -> dict[str, object]:
        """What ``sa list``/``counters`` show of a trap connection."""
        st = self.traps.get(name)
        gw = self.cfg.connection(name)
        if st is None or gw is None:
            return {}
        dp = self.dps[name]
        d: dict[str, object] = {"fallback": gw.conn.trap_fallback, "timeout": gw.conn.trap_timeout,
                                "negotiating": st.pending, "triggers": st.triggers, "failures": st.failures,
                                "routes": "removed (clear)" if dp.trap_released else "installed"}
        if st.last_failure:
            d["last_failure"] = st.last_failure
        if dp.trap is not None:
            d["queue"] = dp.trap.view()
        return d
