"""One ipsecemu IKE peer in a netns for tests and tools: the sans-I/O ``IkeEndpoint`` driven by
:class:`~ipsecemu.io.transport.IkeTransport`, with CHILD_SAs installed into a
:class:`~ipsecemu.io.tunnel.TunForwarder` as the core reports them (make-before-break on rekey).

The lab gateway daemon will do this with the native batch loop; this is the simple version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.io.transport import IkeTransport
from ipsecemu.io.tunnel import TunForwarder

log = logging.getLogger(__name__)

__all__ = ["IkePeer"]


class IkePeer:
    """``IkeEndpoint(configs)`` on ``host`` in ``netns`` + tun ``tun_name`` for the data.

    ``history`` keeps every event in order (tests assert on it).
    """

    def __init__(self, configs: Sequence[Any], host: str, *, netns: str | None = None,
                 tun_name: str | None = None, tun_addresses: Sequence[str] = (), backend: str = "auto",
                 rng: Callable[[int], bytes] = os.urandom, endpoint_kw: dict[str, Any] | None = None) -> None:
        self.host = host
        self.netns = netns
        self.endpoint = IkeEndpoint(list(configs), (host, 500), rng=rng, **(endpoint_kw or {}))
        self.transport = IkeTransport(self.endpoint, [host], netns=netns, on_event=self._on_event)
        self.forwarder = (TunForwarder(self.transport, tun_name, netns=netns, addresses=tun_addresses,
                                       backend=backend) if tun_name else None)
        self.history: list[Any] = []
        self.install_errors: list[str] = []

    async def start(self) -> IkePeer:
        await self.transport.start()
        if self.forwarder is not None:
            try:
                self.forwarder.open()
            except BaseException:
                self.transport.close()
                raise
        return self

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self.transport.close()

    async def __aenter__(self) -> IkePeer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- API passthrough (each call is followed by a pump so the output leaves) ----------
    def initiate(self, name: str, remote: tuple[str, int] | None = None) -> Any:
        sa = self.endpoint.initiate(name, self.transport.now(), remote)
        self.transport.pump()
        return sa

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``peer.call(sa.rekey_child, spi)`` -> ``sa.rekey_child(spi, now)`` then pump."""
        res = fn(*args, self.transport.now())
        self.transport.pump()
        return res

    def sa(self) -> Any:
        """The only (or newest) IKE SA."""
        sas = list(self.endpoint.sas.values())
        if not sas:
            raise LookupError("no IKE SA")
        return sas[-1]

    # -- events -> data plane -----------------------------------------------------------
    def _on_event(self, ev: Any) -> None:
        self.history.append(ev)
        name = type(ev).__name__
        fw = self.forwarder
        if fw is None:
            return
        keys = getattr(ev, "keys", None)
        if name in ("ChildSaEstablished", "ChildSaRekeyed") and keys is not None:
            if not keys.encap:
                # libipsec peers always force UDP encapsulation; raw ESP needs a raw socket we don't have
                self.install_errors.append(f"{keys!r}: not UDP-encapsulated")
                return
            fw.install(keys.inbound, keys.outbound, keys.remote, keys.remote_ts, keys.local_ts,
                       local_host=keys.local[0])
        elif name == "ChildSaDeleted":
            fw.remove(ev.inbound_spi, ev.outbound_spi)
