"""What is bound to one local IKE address (:class:`LocalAddress`), the driver that sits between its
transport and the IKE core (:class:`EventsFirst`), and the state the gateway's parts share
(:class:`GatewayState`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from ipsecemu.config.gateway import GatewayConfig
from ipsecemu.gateway.datapath import ConnectionDatapath, Port
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import ParseError
from ipsecemu.ike.events import Event
from ipsecemu.ike.message import decode_header
from ipsecemu.io.transport import IkeTransport

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["EventsFirst", "GatewayState", "LocalAddress"]


class LocalAddress:
    """Everything bound to one local IKE address."""

    def __init__(self, addr: str, endpoint: IkeEndpoint, transport: IkeTransport) -> None:
        self.addr = addr
        self.endpoint = endpoint
        self.transport = transport
        self.nat_port = 4500
        self.ike_pair: tuple[socket.socket, socket.socket] | None = None


class EventsFirst:
    """The endpoint as the transport's driver, with one change: the core's events are handled
    *before* the datagrams they came with are sent.  So a Child SA is in the data path before
    our CREATE_CHILD_SA/IKE_AUTH response or our DELETE of its predecessor leaves (as a kernel
    IPsec stack does it), and the peer can never send on an SA we have not installed.  It also
    notes whether the input being handled was a response: events then come from exchanges we
    started (we are the initiator of that rekey)."""

    def __init__(self, endpoint: IkeEndpoint, on_event: Callable[[Event, bool], None]) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.from_response = False
        self.last_sent: dict[str, float] = {}  # peer host -> when IKE last went there (keepalives)

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float,
                         local: tuple[str, int] | None = None) -> None:
        try:
            self.from_response = decode_header(data).response
        except ParseError:
            self.from_response = False  # the endpoint counts and drops it
        self.endpoint.receive_datagram(data, addr, now, local)
        self._drain()

    def handle_timer(self, now: float) -> None:
        self.from_response = False
        self.endpoint.handle_timer(now)
        self._drain()

    def _drain(self) -> None:
        while (ev := self.endpoint.next_event()) is not None:
            try:
                self.on_event(ev, self.from_response)
            except Exception:  # one bad event must not stop IKE
                log.exception("handling %s failed", type(ev).__name__)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
        self._drain()  # API calls (rekey, delete, initiate) may have queued events too
        out = self.endpoint.datagrams_to_send(now)
        for _data, remote, _local in out:
            self.last_sent[remote[0]] = now
        return out

    def get_timer(self) -> float | None:
        return self.endpoint.get_timer()

    def next_event(self) -> None:
        return None  # already handled in _drain


class GatewayState:
    """What the gateway's parts (sockets.py, timers.py, ops.py) share; set up by ``Gateway.__init__``."""

    cfg: GatewayConfig
    locals: dict[str, LocalAddress]
    dps: dict[str, ConnectionDatapath]
    ports: dict[str, Port]

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time()
