"""ESP anti-replay window (RFC 4303 section 3.4.3 and appendix A) with ESN seq_hi inference.

The window is split into :meth:`ReplayWindow.check` (is this sequence number acceptable, and
what is its full 64-bit value?) and :meth:`ReplayWindow.commit` (remember it), so that a
caller can authenticate the packet in between and never move the window for a forgery.

Exact rules (the native backend mirrors them):

* State: ``top`` (T, the highest full sequence number committed so far, initially 0) and a
  bitmap of the last ``size`` numbers ending at T.  Sequence number 0 is never sent, so it is
  treated as already seen: the fresh window behaves as if 0 had been committed.
* Full sequence number: without ESN it is the 32-bit wire value.  With ESN, seq_hi is
  inferred per RFC 4303 appendix A2.2 from T and W, where W = ``size``, or 2^31 when the
  window is disabled (``size == 0``).  An inferred seq_hi below 0 or above 2^32-1 (a packet
  "before the start" or "after the end" of the 64-bit space) is a REPLAY when the window is
  enabled; with the window disabled it is clamped to 0..2^32-1 and the ICV decides.
* ``size > 0``: a full number is rejected if ``seq + size <= T`` (older than the window) or
  its bit is set (duplicate).  ``size == 0``: nothing is rejected (seq_hi inference still
  follows T).
* ``commit(seq)``: T = max(T, seq) and the bit for seq is set.
"""

from __future__ import annotations

from ipsecemu.base.satypes import MAX_REPLAY_WINDOW

_MASK32 = 0xFFFFFFFF
_MAX64 = (1 << 64) - 1


class ReplayWindow:
    """One inbound SA's window.  ``size`` is 0 (disabled) .. 4096 packets."""

    __slots__ = ("size", "esn", "top", "_bits", "_mask", "_infer_w")

    def __init__(self, size: int, esn: bool, *, top: int = 0) -> None:
        if not 0 <= size <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay window size must be 0..{MAX_REPLAY_WINDOW}, got {size}")
        limit = _MAX64 if esn else _MASK32
        if not 0 <= top <= limit:
            raise ValueError(f"replay window top must be 0..{limit}, got {top}")
        self.size = size
        self.esn = esn
        self.top = top
        # bit i set <=> sequence number (top - i) was seen; bit 0 is top itself (or the
        # virtual packet 0 on a fresh window).
        self._mask = (1 << size) - 1
        self._bits = 1 & self._mask
        self._infer_w = size if size else 1 << 31

    def infer(self, seq_lo: int) -> int | None:
        """Full sequence number for a 32-bit wire value, or None if the inferred seq_hi is out
        of range and the window is enabled."""
        if not self.esn:
            return seq_lo
        w = self._infer_w
        tl = self.top & _MASK32
        th = self.top >> 32
        if tl >= w - 1:
            # Case A: the window lies within one seq_hi "epoch".
            seq_hi = th if seq_lo >= tl - w + 1 else th + 1
        else:
            # Case B: the window straddles the previous epoch.
            seq_hi = th - 1 if seq_lo >= ((tl - w + 1) & _MASK32) else th
        if seq_hi < 0 or seq_hi > _MASK32:
            if self.size:
                return None
            seq_hi = min(max(seq_hi, 0), _MASK32)
        return (seq_hi << 32) | seq_lo

    def check(self, seq_lo: int) -> int | None:
        """Return the full sequence number if the packet may be processed, else None (REPLAY).
        Does not change the window."""
        seq = self.infer(seq_lo)
        if seq is None or not self.size:
            return seq
        if seq > self.top:
            return seq
        diff = self.top - seq
        if diff >= self.size or (self._bits >> diff) & 1:
            return None
        return seq

    def commit(self, seq: int) -> None:
        """Record a checked *and authenticated* full sequence number."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1 & self._mask
            self.top = seq
        elif self.size:
            diff = self.top - seq
            if diff < self.size:
                self._bits |= 1 << diff

    def seen(self, seq: int) -> bool:
        """True if ``seq`` (full) is inside the window and marked (for tests and debugging)."""
        if seq > self.top or not self.size:
            return False
        diff = self.top - seq
        return diff < self.size and bool((self._bits >> diff) & 1)
