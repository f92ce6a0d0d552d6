"""An in-memory network for sans-I/O IKE endpoints: no sockets, a virtual clock, optional loss
and a NAT.  Used by tests and by anyone rehearsing IKE behaviour without namespaces.

    net = LoopbackNet([a, b])
    a.initiate("conn", net.now)
    net.run()                     # deliver until quiet
    net.advance(10.0)             # move the clock, fire timers, deliver
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Addr = tuple[str, int]


class Driven(Protocol):
    local: Addr

    def receive_datagram(self, data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


@dataclass
class Nat:
    """A source NAT in front of ``inside`` (a host address): its packets leave as ``public``
    with ports mapped 500 -> 1500+n, 4500 -> 14500+n; replies are translated back."""

    inside: str
    public: str
    _map: dict[Addr, Addr] = field(default_factory=dict)

    def out(self, src: Addr) -> Addr:
        if src not in self._map:
            self._map[src] = (self.public, 10000 + src[1] + len(self._map))
        return self._map[src]

    def back(self, dst: Addr) -> Addr | None:
        for inner, outer in self._map.items():
            if outer == dst:
                return inner
        return None


@dataclass
class Packet:
    data: bytes
    src: Addr
    dst: Addr


class LoopbackNet:
    def __init__(self, nodes: list[Driven], now: float = 0.0, nat: Nat | None = None) -> None:
        self.nodes = nodes
        self.now = now
        self.nat = nat
        #: return False to drop a packet (loss injection); sees the packet as sent
        self.filter: Callable[[Packet], bool] = lambda p: True
        #: reorder each batch of packets sent at once (e.g. the fragments of one message)
        self.reorder: Callable[[list[Packet]], list[Packet]] = lambda batch: batch
        self.log: list[Packet] = []  # every packet delivered
        self.dropped: list[Packet] = []

    def _deliver(self, pkt: Packet) -> None:
        src, dst = pkt.src, pkt.dst
        if self.nat is not None and src[0] == self.nat.inside:
            src = self.nat.out(src)
        if self.nat is not None and dst[0] == self.nat.public:
            back = self.nat.back(dst)
            if back is None:
                self.dropped.append(pkt)
                return
            dst = back
        for node in self.nodes:
            if node.local[0] == dst[0]:
                self.log.append(Packet(pkt.data, src, dst))
                node.receive_datagram(pkt.data, src, self.now, dst)
                return
        self.dropped.append(pkt)

    def run(self, max_packets: int = 10000) -> int:
        """Deliver everything queued (and what that triggers) at the current time."""
        n = 0
        while n < max_packets:
            batch = [Packet(d, local, remote) for node in self.nodes for d, remote, local in
                     node.datagrams_to_send(self.now)]
            if not batch:
                return n
            for pkt in self.reorder(batch):
                n += 1
                if self.filter(pkt):
                    self._deliver(pkt)
                else:
                    self.dropped.append(pkt)
        raise RuntimeError("packet storm: more than max_packets deliveries")

    def next_timer(self) -> float | None:
        times = [t for t in (n.get_timer() for n in self.nodes) if t is not None]
        return min(times) if times else None

    def advance(self, seconds: float) -> None:
        """Run the clock forward ``seconds``, firing every timer on the way."""
        end = self.now + seconds
        self.run()
        while True:
            t = self.next_timer()
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            for node in self.nodes:
                nt = node.get_timer()
                if nt is not None and nt <= self.now:
                    node.handle_timer(self.now)
            self.run()
        self.now = end
