"""The gateway's 0.1 s tick: data-plane soft limits turned into Child SA rekeys, the data-path
watchdog, and NAT keepalives (RFC 3948 section 2.3); and the re-initiation back-off of a failing
connection (:class:`Backoff`)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState

from .driver import EventsFirst, GatewayState, LocalAddress

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "BACKOFF_JITTER", "TICK", "Backoff", "Retry", "Timers"]

TICK = 0.1
BACKOFF_BASE = 1.0  # s before the first re-initiation
BACKOFF_CAP = 60.0  # s: the longest wait, however often it failed
BACKOFF_JITTER = 0.2  # each wait is up to 20% shorter, at random: many gateways do not retry in step


@dataclass
class Retry:
    """One connection's failures in a row and its next attempt (loop time; None: one is running)."""

    attempts: int = 0
    next_at: float | None = None
    last_failure: str = ""


class Backoff:
    """Exponential back-off with jitter for re-initiating a failing connection: 1 s, 2 s, 4 s ...
    capped at 60 s, reset when an IKE SA of the connection is established.  A peer with a wrong PSK
    is then asked about 60 times an hour, not 3600.  ``rng`` returns a float in [0, 1) (injected by
    tests; the clock is the caller's ``now``)."""

    def __init__(self, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP, jitter: float = BACKOFF_JITTER,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.jitter, self.rng = base, cap, jitter, rng
        self.retries: dict[str, Retry] = {}

    def failed(self, name: str, now: float, why: str = "") -> float:
        """One more failure of ``name``: the delay until its next attempt (also noted in ``retries``)."""
        r = self.retries.setdefault(name, Retry())
        r.attempts += 1
        r.last_failure = why
        # 2**n overflows nothing here: the exponent stops growing once the cap is reached
        delay = min(self.cap, self.base * 2.0 ** min(r.attempts - 1, 32)) * (1.0 - self.jitter * self.rng())
        r.next_at = now + delay
        return delay

    def started(self, name: str) -> None:
        r = self.retries.get(name)
        if r is not None:
            r.next_at = None

    def succeeded(self, name: str) -> None:
        self.retries.pop(name, None)

    def view(self, name: str, now: float) -> dict[str, object]:
        """What ``sa list`` shows of a connection's back-off (empty when it is not failing)."""
        r = self.retries.get(name)
        if r is None:
            return {}
        d: dict[str, object] = {"attempts": r.attempts, "last-failure": r.last_failure}
        if r.next_at is not None:
            d["next-attempt"] = round(max(0.0, r.next_at - now), 1)
        return d


class Timers(GatewayState):
    """Mixin of :class:`~ipsecemu.gateway.daemon.Gateway`: the periodic work."""

    _ka: dict[tuple[bytes, bytes], tuple[float, int]]

    async def _tick(self) -> None:
        for dp in self.dps.values():
            dp.on_limit = self._on_limit  # the C loop wakes us at a soft limit: rekey at once
        while True:
            await asyncio.sleep(TICK)
            try:
                self._check_lifetimes()
            except Exception:
                log.exception("lifetime check failed")
            try:
                self._keepalives(self.now())
            except Exception:
                log.exception("keepalive check failed")

    def _on_limit(self) -> None:
        try:
            self._check_lifetimes()
        except Exception:
            log.exception("lifetime check failed")

    def _esp_out(self, sa: IkeSa) -> int:
        """ESP packets sent so far on this IKE SA's Child SAs (plain counter loads)."""
        dp = self.dps.get(sa.config.name)
        if dp is None:
            return 0
        return sum(dp.counters(spi)[1].packets for spi in sa.children if spi in dp.children)

    def _keepalives(self, now: float) -> None:
        live: set[tuple[bytes, bytes]] = set()
        for local in self.locals.values():
            driver = local.transport.driver
            ike_sent = driver.last_sent if isinstance(driver, EventsFirst) else {}
            for sa in local.endpoint.sas.values():
                interval = sa.config.keepalive_s
                if sa.state != IkeState.ESTABLISHED or not sa.encap or interval <= 0:
                    continue
                key = (sa.spi_i, sa.spi_r)
                live.add(key)
                esp = self._esp_out(sa)
                last, seen = self._ka.get(key, (now, esp))
                if esp != seen:
                    last = now  # ESP went out: the NAT mapping is fresh
                last = max(last, ike_sent.get(sa.remote[0], last))
                if now - last >= interval:
                    local.transport.send_keepalive(sa.remote, local.addr)
                    local.transport.counters["keepalive_out"] += 1
                    last = now
                self._ka[key] = (last, esp)
        for key in set(self._ka) - live:
            del self._ka[key]

    def _check_lifetimes(self) -> None:
        for dp in self.dps.values():
            dp.watchdog()
            dp.promote(self.now())
            for spi in dp.soft_expired():
                owner = self._owner_of_child(spi)
                if owner is None:
                    continue
                local, sa = owner
                log.info("%s: Child SA %08x reached its soft byte/packet limit: rekeying", dp.gw.name, spi)
                try:
                    sa.rekey_child(spi, self.now())
                except LocalProtocolError as exc:
                    log.info("%s: rekey %08x not started: %s", dp.gw.name, spi, exc)
                local.transport.pump()

    def _owner_of_child(self, spi: int) -> tuple[LocalAddress, IkeSa] | None:
        for local in self.locals.values():
            for sa in local.endpoint.sas.values():
                if spi in sa.children and sa.state == IkeState.ESTABLISHED:
                    return local, sa
        return None
