"""IKEv2 message fragmentation (RFC 7383).

Negotiated with IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (``IkeSaConfig.fragmentation``,
default on).  Once both sides support it, an encrypted message whose datagram would exceed
``IkeSaConfig.fragment_size`` (the whole IP datagram, 1280 by default as strongSwan's
``fragment_size``; the IPv4/IPv6 + UDP headers and the non-ESP marker on port 4500 are taken off)
is sent as Encrypted Fragment (SKF) payloads: the encoded inner payload chain is cut into chunks,
each sealed on its own (own IV, own ICV, the fragment number and total authenticated), every
fragment a complete IKE message with the same message ID.  Retransmissions resend all fragments.

Receiving, each fragment is authenticated before it is kept; reassembly is bounded:
at most ``MAX_FRAGMENTS`` fragments and ``MAX_MESSAGE`` bytes of plaintext per message, one
message per direction at a time, and a partly collected message is dropped ``TIMEOUT_S`` after
its first fragment.  Fragments may come in any order; duplicates are ignored; a fragment with a
larger Total Fragments than collected so far restarts the collection (the sender re-fragmented
for a smaller size), a smaller one is dropped (RFC 7383 section 2.6.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from . import message as m
from .consts import Payload
from .crypto import SkCipher
from .errors import IntegrityError

MAX_FRAGMENTS = 64
MAX_MESSAGE = 64 * 1024
TIMEOUT_S = 30.0
MIN_FRAGMENT_SIZE = 576  # RFC 7383 section 2.5.1: no IPv4 host must accept less


def ike_budget(fragment_size: int, local: tuple[str, int], ipv6: bool) -> int:
    """Largest IKE message (bytes) that fits a ``fragment_size`` IP datagram sent from ``local``."""
    overhead = (40 if ipv6 else 20) + 8 + (4 if local[1] != 500 else 0)
    return max(fragment_size, MIN_FRAGMENT_SIZE) - overhead


def fragment(msg: m.Message, cipher: SkCipher, rng: Callable[[int], bytes], max_len: int) -> list[bytes]:
    """``msg`` as SKF fragments of at most ``max_len`` bytes each (its payloads are the inner ones)."""
    inner = m.encode_payloads(msg.payloads)
    first = msg.payloads[0].ptype if msg.payloads else 0
    enc = cipher.encr
    blk = 1 if enc.aead else enc.block
    room = max_len - m.HEADER_LEN - 8 - enc.iv_len - cipher.icv_len  # 8: SKF header + number/total
    chunk = (room // blk) * blk - 1  # leaves the pad-length octet (and no padding) inside the block
    if chunk < 16:
        raise ValueError(f"fragment size {max_len} too small for this cipher")
    parts = [inner[i : i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    if len(parts) > MAX_FRAGMENTS:
        raise ValueError(f"message needs {len(parts)} fragments, more than {MAX_FRAGMENTS}")
    out = []
    for n, part in enumerate(parts, 1):
        _pad, body_len = cipher.body_len(len(part))
        skf_len = 8 + body_len
        assoc = (msg.header(Payload.SKF, m.HEADER_LEN + skf_len)
                 + struct.pack("!BBHHH", first if n == 1 else 0, 0, skf_len, n, len(parts)))
        out.append(assoc + cipher.seal(assoc, part, rng(enc.iv_len)))
    return out


@dataclass
class Fragment:
    number: int
    total: int
    first_inner: int
    data: bytes  # decrypted and authenticated chunk


def open_fragment(data: bytes, cipher: SkCipher) -> Fragment:
    """Authenticate and decrypt one SKF message.  Raises IntegrityError for anything unusable:
    an unauthenticated datagram earns no answer."""
    if len(data) < m.HEADER_LEN + 8 or data[16] != Payload.SKF:
        raise IntegrityError("not an SKF message")
    # the SKF generic header's next-payload field names the first inner payload (fragment 1 only)
    first_inner, _flags, plen, number, total = struct.unpack_from("!BBHHH", data, m.HEADER_LEN)
    if m.HEADER_LEN + plen != len(data) or plen < 8:
        raise IntegrityError("SKF must be the only payload")
    chunk = cipher.open(data[: m.HEADER_LEN + 8], data[m.HEADER_LEN + 8 :])
    return Fragment(number, total, first_inner, chunk)


@dataclass
class _Collect:
    total: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    first_inner: int = 0
    size: int = 0


class Reassembler:
    """Collects the fragments of at most one message per direction (request / response)."""

    def __init__(self) -> None:
        self._by_dir: dict[bool, tuple[int, _Collect]] = {}

    def add(self, response: bool, msg_id: int, frag: Fragment, now: float, count: Callable[[str], None]
            ) -> tuple[int, bytes] | None:
        """Keep ``frag`` (already authenticated); return (first inner payload type, inner payloads)
        when the message is complete.  ``count`` gets a reason for every fragment dropped."""
        if not 1 <= frag.number <= frag.total or frag.total > MAX_FRAGMENTS:
            count("fragment_invalid")
            return None
        cur = self._by_dir.get(response)
        if cur is not None and (cur[0] != msg_id or now - cur[1].started > TIMEOUT_S):
            if cur[0] == msg_id:
                count("fragment_timeout")
            cur = None
        if cur is not None and frag.total != cur[1].total:
            if frag.total < cur[1].total:
                count("fragment_stale")
                return None
            cur = None  # the sender re-fragmented into more pieces: start over
        if cur is None:
            cur = (msg_id, _Collect(frag.total, now))
            self._by_dir[response] = cur
        col = cur[1]
        if frag.number in col.parts:
            count("fragment_duplicate")
            return None
        if col.size + len(frag.data) > MAX_MESSAGE:
            count("fragment_too_big")
            del self._by_dir[response]
            return None
        col.parts[frag.number] = frag.data
        col.size += len(frag.data)
        if frag.number == 1:
            col.first_inner = frag.first_inner
        if len(col.parts) < col.total:
            count("fragment_held")
            return None
        del self._by_dir[response]
        return col.first_inner, b"".join(col.parts[i] for i in range(1, col.total + 1))

    def clear(self) -> None:
        self._by_dir.clear()

    def pending(self) -> int:
        return sum(len(c.parts) for _id, c in self._by_dir.values())
