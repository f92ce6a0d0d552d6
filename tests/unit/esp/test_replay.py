"""The ESP replay window: edge cases, ESN seq_hi inference, and a hypothesis comparison with a
tiny obviously-correct model (a set of seen numbers + the highest one)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecemu.esp.replay import ReplayWindow

M32 = (1 << 32) - 1


class Model:
    """Obviously correct: remember every accepted number."""

    def __init__(self, size: int, top: int = 0) -> None:
        self.size = size
        self.highest = top
        self.seen = {top}  # 0 (or the resume point) counts as already received

    def acceptable(self, seq: int) -> bool:
        if self.size == 0:
            return True
        return seq not in self.seen and seq > self.highest - self.size

    def commit(self, seq: int) -> None:
        self.seen.add(seq)
        self.highest = max(self.highest, seq)


def test_basic_window_64() -> None:
    w = ReplayWindow(64, esn=False)
    assert w.check(0) is None  # seq 0 is never sent
    for s in range(1, 66):
        assert w.check(s) == s
        w.commit(s)
    assert w.top == 65
    assert w.check(65) is None and w.check(30) is None  # duplicates
    assert w.check(1) is None  # 65 - 1 = 64: older than the window
    assert w.check(66) == 66


def test_check_does_not_commit() -> None:
    w = ReplayWindow(32, esn=False)
    assert w.check(5) == 5
    assert w.check(5) == 5  # still acceptable: only commit() remembers
    assert w.top == 0 and not w.seen(5)
    w.commit(5)
    assert w.check(5) is None and w.seen(5)


def test_out_of_order_inside_window() -> None:
    w = ReplayWindow(64, esn=False)
    for s in (100, 50, 99, 37):
        assert w.check(s) == s
        w.commit(s)
    assert w.check(36) is None  # 100 - 36 = 64: too old
    assert w.check(38) == 38  # inside, never seen
    assert w.check(50) is None and w.check(37) is None


@pytest.mark.parametrize("size", [1, 64, 4096])
def test_window_boundary(size: int) -> None:
    w = ReplayWindow(size, esn=False)
    top = 10_000
    w.commit(top)
    assert w.check(top - size + 1) == (top - size + 1 if size > 1 else None)
    assert w.check(top - size) is None
    assert w.check(top) is None


def test_big_jump_clears_bitmap() -> None:
    w = ReplayWindow(64, esn=False)
    for s in range(1, 10):
        w.commit(s)
    w.commit(1000)
    assert all(w.check(s) == s for s in range(937, 1000))
    assert w.check(936) is None


def test_window_zero_accepts_duplicates() -> None:
    w = ReplayWindow(0, esn=False)
    for _ in range(3):
        assert w.check(7) == 7
        w.commit(7)
    assert w.check(1) == 1 and w.check(0) == 0


def test_esn_crosses_2_pow_32() -> None:
    w = ReplayWindow(64, esn=True, top=M32)  # seq_hi 0, seq_lo 0xffffffff
    assert w.check(0) == 1 << 32  # wrapped low half -> next epoch
    assert w.check(M32 - 62) == M32 - 62  # still inside the window of epoch 0
    w.commit(1 << 32)
    w.commit((1 << 32) + 5)
    # Case B: T_lo = 5 < W - 1, so high wire values belong to the previous epoch.
    assert w.check(M32 - 10) == M32 - 10
    assert w.check(M32) is None  # the resume point 2^32-1 counts as received, across the epoch
    assert w.check(3) == (1 << 32) + 3
    assert w.check(5) is None and w.check(0) is None  # duplicates of 2^32+5 and 2^32


def test_esn_window_keeps_bits_across_epochs() -> None:
    w = ReplayWindow(64, esn=True)
    w.commit(M32 - 1)
    w.commit(M32)
    w.commit((1 << 32) + 2)
    assert w.check(M32 & M32) is None  # full 2^32-1 seen
    assert w.check(M32 - 1) is None
    assert w.check(M32 - 2) == M32 - 2


def test_esn_window_zero_uses_half_space() -> None:
    # No replay protection, but seq_hi still follows T with W = 2^31.
    w = ReplayWindow(0, esn=True, top=(3 << 32) + 100)
    assert w.check(200) == (3 << 32) + 200
    # Case B (T_lo < W - 1): wire values >= T_lo - W + 1 (mod 2^32) = 2^31 + 101 are behind T.
    assert w.check(0x80000064) == (3 << 32) + 0x80000064
    assert w.check(0x80000065) == (2 << 32) + 0x80000065
    w2 = ReplayWindow(0, esn=True, top=(3 << 32) + 0x90000000)
    assert w2.check(5) == (4 << 32) + 5  # Case A: below T_lo - W + 1 -> next epoch
    assert w2.check(0x10000001) == (3 << 32) + 0x10000001


def test_esn_before_start_is_replay() -> None:
    w = ReplayWindow(64, esn=True)
    assert w.check(M32) is None  # would need seq_hi = -1
    w0 = ReplayWindow(0, esn=True)
    assert w0.check(M32) == M32  # window disabled: clamped, the ICV decides


def test_esn_end_of_space() -> None:
    top = (M32 << 32) | (M32 - 5)
    w = ReplayWindow(64, esn=True, top=top)
    assert w.check(M32) == (1 << 64) - 1
    assert w.check(1) is None  # would need seq_hi = 2^32


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(4097, esn=False)
    with pytest.raises(ValueError):
        ReplayWindow(-1, esn=True)
    with pytest.raises(ValueError):
        ReplayWindow(64, esn=False, top=1 << 32)


SIZES = st.sampled_from([0, 1, 2, 31, 32, 64, 100, 1024, 4096])


@settings(max_examples=300, deadline=None)
@given(size=SIZES, ops=st.lists(st.tuples(st.integers(-5000, 5000), st.booleans()), max_size=80),
       start=st.sampled_from([0, 5, 10_000, M32 - 3000]))
def test_matches_model_32bit(size: int, ops: list[tuple[int, bool]], start: int) -> None:
    w = ReplayWindow(size, esn=False, top=start)
    m = Model(size, start)
    for delta, authentic in ops:
        seq = min(max(m.highest + delta, 0), M32)
        got = w.check(seq)
        assert (got is not None) == m.acceptable(seq), (seq, m.highest)
        if got is not None:
            assert got == seq
            if authentic:  # a forged packet is checked but never committed
                w.commit(seq)
                m.commit(seq)
        assert w.top == m.highest


@settings(max_examples=300, deadline=None)
@given(size=SIZES,
       ops=st.lists(st.tuples(st.one_of(st.integers(-5000, 5000), st.integers(-(1 << 31), 1 << 32)),
                              st.booleans()), max_size=60),
       start=st.sampled_from([0, 7, M32 - 100, (1 << 32) + 3, (5 << 32) - 1, (9 << 32) + 0x7FFFFFFF]))
def test_matches_model_esn(size: int, ops: list[tuple[int, bool]], start: int) -> None:
    """Only the low 32 bits go in; the window must infer the right full number whenever the
    true number lies in the range RFC 4303 A2 can infer: [T - W + 1, T - W + 2^32]."""
    w = ReplayWindow(size, esn=True, top=start)
    m = Model(size, start)
    infer_w = size or 1 << 31
    for delta, authentic in ops:
        lo = max(m.highest - infer_w + 1, 0)
        hi = m.highest - infer_w + (1 << 32)
        seq = min(max(m.highest + delta, lo), hi)
        got = w.check(seq & M32)
        assert (got is not None) == m.acceptable(seq), (seq, m.highest)
        if got is not None:
            assert got == seq
            if authentic:
                w.commit(seq)
                m.commit(seq)
        assert w.top == m.highest


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([0, 1, 16, 64]), esn=st.booleans(),
       order=st.lists(st.tuples(st.integers(0, 99), st.booleans()), max_size=60))
def test_sa_level_reorder_duplicate_forge(size: int, esn: bool, order: list[tuple[int, bool]]) -> None:
    """Real ESP packets through EspInbound in a random order with duplicates and forgeries:
    verdicts match the model, and forgeries never move the window."""
    from ipsecemu.base.satypes import EspSaConfig, Verdict
    from ipsecemu.esp.reference import EspInbound, EspOutbound

    cfg = EspSaConfig(spi=0x4242, encr="aes-gcm-16", enc_key=bytes(20), esn=esn, replay_window=size)
    out = EspOutbound(cfg)
    pkts = [out.encap(bytes([i]), 4)[1] for i in range(100)]
    inb = EspInbound(cfg)
    m = Model(size)
    for idx, forged in order:
        seq = idx + 1
        pkt = pkts[idx]
        if forged:
            pkt = pkt[:-1] + bytes([pkt[-1] ^ 1])
        res = inb.decap(pkt)
        if not m.acceptable(seq):
            # ESN reads a number below the window as the next epoch (RFC 4303 A2.2): ICV fails
            too_old_esn = esn and seq <= m.highest - size
            assert res.verdict == (Verdict.BAD_ICV if too_old_esn else Verdict.REPLAY)
        elif forged:
            assert res.verdict == Verdict.BAD_ICV
        else:
            assert res.verdict == Verdict.OK and res.seq == seq and res.payload == bytes([idx])
            m.commit(seq)
        assert inb.window.top == m.highest
    if size:
        assert inb.counters.packets == len(m.seen) - 1  # the model's seen set includes 0
