"""The gateway's 0.1 s tick: data-plane soft limits turned into Child SA rekeys, the data-path
watchdog, and NAT keepalives (RFC 3948 section 2.3)."""

from __future__ import annotations

import asyncio
import logging

from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState

from .driver import EventsFirst, GatewayState, LocalAddress

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["TICK", "Timers"]

TICK = 0.1


class Timers(GatewayState):
    """Mixin of :class:`~ipsecemu.gateway.daemon.Gateway`: the periodic work."""

    _ka: dict[tuple[bytes, bytes], tuple[float, int]]

    async def _tick(self) -> None:
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
