"""The on-demand queue (gateway/trapq.py): 64 packets / 256 KiB per connection, the oldest
dropped first, every packet counted once (queued, dropped, flushed or discarded)."""

from __future__ import annotations

from ipsecemu.gateway.trapq import MAX_BYTES, MAX_PACKETS, TrapQueue


def test_packet_bound_drops_the_oldest() -> None:
    q = TrapQueue()
    for i in range(MAX_PACKETS + 10):
        q.push(i.to_bytes(2, "big") * 20)
    assert MAX_PACKETS == 64 and len(q) == 64 and q.dropped == 10 and q.queued == 74
    out = q.take()
    assert [int.from_bytes(p[:2], "big") for p in out] == list(range(10, 74))  # oldest first, newest kept
    assert len(q) == 0 and q.bytes == 0 and q.flushed == 64


def test_byte_bound_drops_the_oldest() -> None:
    q = TrapQueue()
    big = 60 * 1024
    for i in range(6):  # 6 x 60 KiB > 256 KiB: the first two go
        q.push(bytes([i]) * big)
    assert MAX_BYTES == 256 * 1024 and q.bytes <= MAX_BYTES and len(q) == 4 and q.dropped == 2
    assert [p[0] for p in q.take()] == [2, 3, 4, 5]
    q.push(bytes(MAX_BYTES + 1))  # larger than the whole queue: refused, counted
    assert len(q) == 0 and q.dropped == 3


def test_discard_and_view_account_for_every_packet() -> None:
    q = TrapQueue(max_packets=3)
    for i in range(5):
        q.push(bytes([i]) * 100)
    assert q.view() == {"queued_now": 3, "queued_bytes": 300, "queued": 5, "dropped": 2, "flushed": 0,
                        "discarded": 0}
    assert q.discard() == 3
    v = q.view()
    assert v["queued"] == v["dropped"] + v["flushed"] + v["discarded"] + v["queued_now"]
