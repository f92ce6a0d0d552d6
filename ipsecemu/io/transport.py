"""The asyncio side of IKE: UDP 500/4500 sockets around a sans-I/O IKE core.

:class:`IkeTransport` moves datagrams between sockets and an object with the driving calls of
``ipsecemu.ike.sa.IkeEndpoint`` (``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
``handle_timer``, ``next_event``) and re-arms the one timer.  It knows RFC 3948 framing on the
NAT-T port: a 1-byte 0xFF is a NAT keepalive (ignored), four zero bytes mark IKE (stripped before
the core sees it, prepended when the core sends from the NAT-T port), anything else is ESP and is
handed to the ``on_esp`` callback (the data plane).  Sockets are bound in a given netns (or the
current one), IPv4 and IPv6.

Time is ``loop.time()`` (monotonic) for both ``now`` and the timer, so the core never sees the
wall clock.  Call :meth:`IkeTransport.pump` after any API call on the core (initiate, rekey,
delete) so its output goes out and the timer is re-armed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from ipsecemu.net.netns import entered

log = logging.getLogger(__name__)

__all__ = ["Addr", "IkeDriver", "IkeTransport", "NON_ESP_MARKER", "KEEPALIVE", "open_udp_socket"]

Addr = tuple[str, int]
NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"
IKE_PORT = 500
NAT_T_PORT = 4500
# ESP bursts from a peer arrive faster than per-packet Python drains them
RCVBUF = 4 << 20


class IkeDriver(Protocol):
    """What the transport drives: the five calls of the sans-I/O core."""

    def receive_datagram(self, data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> object | None: ...


EspHandler = Callable[[bytes, Addr, Addr], None]
EventHandler = Callable[[object], None]


def open_udp_socket(host: str, port: int, netns: str | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``(host, port)`` inside ``netns``."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with entered(netns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass  # a smaller buffer only costs drops under load
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, owner: IkeTransport, local: Addr) -> None:
        self.owner = owner
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._on_datagram(data, (addr[0], addr[1]), self.local)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc. arrive here; the core's retransmit timer handles loss
        self.owner.counters["socket_error"] += 1
        log.debug("socket %s: %s", self.local, exc)


class IkeTransport:
    """UDP sockets on ``hosts`` x (``ike_port``, ``nat_port``) driving ``driver`` (None: an
    ESP-only transport for static keys; IKE datagrams are counted in ``ike_dropped``).

    ``on_esp(esp, remote, local)`` receives ESP packets that arrived on the NAT-T port (with the
    UDP header removed, ``SPI | seq | ...``); ``on_event(ev)`` receives the core's events (they
    are also queued on :attr:`events`).  Counters: ``ike_in``, ``ike_out``, ``esp_in``,
    ``esp_out``, ``keepalive_in``, ``short``, ``send_error``, ``socket_error``, ``driver_error``.
    """

    def __init__(self, driver: IkeDriver | None, hosts: Sequence[str], *, netns: str | None = None,
                 ike_port: int = IKE_PORT, nat_port: int = NAT_T_PORT, on_esp: EspHandler | None = None,
                 on_event: EventHandler | None = None) -> None:
        if not hosts:
            raise ValueError("hosts: at least one local address is needed")
        for h in hosts:
            ipaddress.ip_address(h)  # a clear ValueError for a typo, before any socket exists
        self.driver = driver
        self.hosts = list(hosts)
        self.netns = netns
        self.ike_port = ike_port
        self.nat_port = nat_port
        self.on_esp = on_esp
        self.on_event = on_event
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.counters: Counter[str] = Counter()
        self._socks: dict[Addr, asyncio.DatagramTransport] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> IkeTransport:
        self._loop = asyncio.get_running_loop()
        try:
            for host in self.hosts:
                for port in (self.ike_port, self.nat_port):
                    sock = open_udp_socket(host, port, self.netns)
                    tr, _ = await self._loop.create_datagram_endpoint(partial(_Proto, self, (host, port)), sock=sock)
                    self._socks[(host, port)] = tr
        except BaseException:
            self.close()
            raise
        self.pump()
        return self

    async def __aenter__(self) -> IkeTransport:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._timer:
            self._timer.cancel()
            self._timer = None
        for tr in self._socks.values():
            tr.close()
        self._socks.clear()

    @property
    def local_addrs(self) -> list[Addr]:
        return list(self._socks)

    def now(self) -> float:
        return (self._loop or asyncio.get_event_loop()).time()

    # -- input -------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, remote: Addr, local: Addr) -> None:
        if local[1] == self.nat_port:
            if data == KEEPALIVE:
                self.counters["keepalive_in"] += 1
                return
            if len(data) < 4:
                self.counters["short"] += 1
                return
            if data[:4] != NON_ESP_MARKER:
                self.counters["esp_in"] += 1
                if self.on_esp is not None:
                    self.on_esp(data, remote, local)
                else:
                    self.counters["esp_dropped"] += 1
                return
            data = data[4:]
        self.counters["ike_in"] += 1
        if self.driver is None:  # an ESP-only transport (static keys)
            self.counters["ike_dropped"] += 1
            return
        try:
            self.driver.receive_datagram(data, remote, self.now(), local)
        except Exception:  # the core promises not to raise; if it does, keep serving others
            self.counters["driver_error"] += 1
            log.exception("IKE core raised on a datagram from %s", remote)
        self.pump()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            assert self.driver is not None  # no timer is ever armed without a driver
            self.driver.handle_timer(self.now())
        except Exception:
            self.counters["driver_error"] += 1
            log.exception("IKE core raised in handle_timer")
        self.pump()

    # -- output ------------------------------------------------------------------------
    def pump(self) -> None:
        """Send what the core wants sent, deliver its events, re-arm its timer."""
        if self._closed or self.driver is None:
            return
        now = self.now()
        for data, remote, local in self.driver.datagrams_to_send(now):
            self._send_ike(data, remote, local)
        while (ev := self.driver.next_event()) is not None:
            self.events.put_nowait(ev)
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:
                    self.counters["event_handler_error"] += 1
                    log.exception("event handler raised on %s", type(ev).__name__)
        # the handler may have called into the core (e.g. rekey): flush again, once
        for data, remote, local in self.driver.datagrams_to_send(now):
            self._send_ike(data, remote, local)
        self._arm(self.driver.get_timer())

    def _arm(self, at: float | None) -> None:
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _sock_for(self, local: Addr | None, remote: Addr) -> tuple[asyncio.DatagramTransport, Addr] | None:
        v6 = ":" in remote[0]
        port = local[1] if local else self.ike_port
        if local and (local[0], port) in self._socks:
            return self._socks[(local[0], port)], (local[0], port)
        for (h, p), tr in self._socks.items():  # wildcard/unknown local host: same family and port
            if p == port and (":" in h) == v6:
                return tr, (h, p)
        return None

    def _send_ike(self, data: bytes, remote: Addr, local: Addr | None) -> None:
        found = self._sock_for(local, remote)
        if found is None:
            self.counters["send_error"] += 1
            log.warning("no socket for local %s -> %s", local, remote)
            return
        tr, (_h, port) = found
        if port == self.nat_port:
            data = NON_ESP_MARKER + data
        try:
            tr.sendto(data, remote)
            self.counters["ike_out"] += 1
        except OSError as exc:
            self.counters["send_error"] += 1
            log.debug("send to %s failed: %s", remote, exc)

    def send_esp(self, esp: bytes, remote: Addr, local_host: str | None = None) -> None:
        """Send one ESP packet (``SPI | seq | ...``) from the NAT-T socket to ``remote``."""
        self.send_esp_batch((esp,), remote, local_host)

    def send_esp_batch(self, packets: Iterable[bytes], remote: Addr, local_host: str | None = None) -> None:
        found = self._sock_for((local_host or "", self.nat_port), remote)
        if found is None:
            self.counters["send_error"] += 1
            return
        tr = found[0]
        for p in packets:
            tr.sendto(p, remote)
            self.counters["esp_out"] += 1

    def send_keepalive(self, remote: Addr, local_host: str | None = None) -> None:
        found = self._sock_for((local_host or "", self.nat_port), remote)
        if found is not None:
            found[0].sendto(KEEPALIVE, remote)

    # -- helpers for tests and tools ---------------------------------------------------
    async def wait_event(self, match: Callable[[object], bool] | type, timeout: float = 10.0) -> object:
        """Wait for the first queued event matching ``match`` (a type or a predicate); events
        before it are discarded."""
        pred = (lambda ev: isinstance(ev, match)) if isinstance(match, type) else match

        async def get() -> object:
            while True:
                ev = await self.events.get()
                if pred(ev):
                    return ev

        return await asyncio.wait_for(get(), timeout)
