"""The packet queue of an on-demand (``start_action: trap``) connection: what arrives in its tun
while no Child SA exists waits here until the negotiation it triggered brings one up, then leaves
through that SA first (so a TCP SYN that started IKE is not lost).  Bounded per connection --
``MAX_PACKETS`` packets and ``MAX_BYTES`` bytes -- dropping the oldest, every drop counted."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["MAX_BYTES", "MAX_PACKETS", "TrapQueue"]

MAX_PACKETS = 64
MAX_BYTES = 256 * 1024


@dataclass
class TrapQueue:
    max_packets: int = MAX_PACKETS
    max_bytes: int = MAX_BYTES
    queued: int = 0  # packets ever queued
    dropped: int = 0  # oldest packets pushed out by the bounds (or refused: larger than max_bytes)
    flushed: int = 0  # packets handed to an SA when it came up
    discarded: int = 0  # packets thrown away with the queue (fallback, shutdown)
    _q: deque[bytes] = field(default_factory=deque)
    _bytes: int = 0

    def push(self, pkt: bytes) -> None:
        if len(pkt) > self.max_bytes:
            self.dropped += 1
            return
        self._q.append(pkt)
        self._bytes += len(pkt)
        self.queued += 1
        while len(self._q) > self.max_packets or self._bytes > self.max_bytes:
            self._bytes -= len(self._q.popleft())
            self.dropped += 1

    def take(self) -> list[bytes]:
        """Everything queued, oldest first (for the new SA); the queue is empty after."""
        out = list(self._q)
        self._q.clear()
        self._bytes = 0
        self.flushed += len(out)
        return out

    def discard(self) -> int:
        n = len(self._q)
        self._q.clear()
        self._bytes = 0
        self.discarded += n
        return n

    def __len__(self) -> int:
        return len(self._q)

    @property
    def bytes(self) -> int:
        return self._bytes

    def view(self) -> dict[str, int]:
        return {"queued_now": len(self._q), "queued_bytes": self._bytes, "queued": self.queued,
                "dropped": self.dropped, "flushed": self.flushed, "discarded": self.discarded}
