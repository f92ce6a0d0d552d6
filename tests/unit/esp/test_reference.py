"""The reference ESP: every algorithm round trips, and bad input gets the right verdict and
counter (never an exception), following the per-packet rules in ipsecemu/dataplane/api.py."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecemu.base.satypes import (
    AEAD_ESP_ENCR,
    ESP_ENCR,
    ESP_INTEG,
    ConfigError,
    EspSaConfig,
    ExpireEvent,
    Lifetime,
    SaCounters,
    Verdict,
)
from ipsecemu.dataplane import backend
from ipsecemu.esp.reference import EspInbound, EspInboundTable, EspOutbound

SPI = 0x1234ABCD
M32 = (1 << 32) - 1


def key(n: int, fill: int = 0x42) -> bytes:
    return bytes((fill + i) & 0xFF for i in range(n))


def cfg(encr: str = "aes-gcm-16", keylen: int | None = None, integ: str | None = None, **kw: object) -> EspSaConfig:
    keylens, salt, *_ = ESP_ENCR[encr]
    k = key((keylen if keylen is not None else keylens[-1]) + salt)
    if encr not in AEAD_ESP_ENCR and integ is None:
        integ = "hmac-sha256-128"
    ik = key(ESP_INTEG[integ][0], 0x77) if integ else b""
    return EspSaConfig(spi=kw.pop("spi", SPI), encr=encr, enc_key=k, integ=integ, integ_key=ik, **kw)  # type: ignore[arg-type]


SUITES = [(e, k, None) for e in sorted(AEAD_ESP_ENCR) for k in ESP_ENCR[e][0]] + [
    (e, k, i) for e in ("aes-cbc", "3des-cbc", "null") for k in ESP_ENCR[e][0] for i in sorted(ESP_INTEG)
]


def test_reference_backend_exports() -> None:
    mod = backend("reference")
    assert mod.EspOutbound is EspOutbound and mod.EspInbound is EspInbound


@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("encr,keylen,integ", SUITES)
def test_roundtrip_every_suite(encr: str, keylen: int, integ: str | None, esn: bool) -> None:
    c = cfg(encr, keylen, integ, esn=esn)
    _klens, _salt, iv_len, block, icv = ESP_ENCR[encr]
    icv = icv or ESP_INTEG[integ][1]  # type: ignore[index]
    out, inb = EspOutbound(c), EspInbound(c)
    for n in (0, 1, 2, 3, 17, 100, 1500):
        payload = key(n, n)
        verdict, pkt = out.encap(payload, 4)
        assert verdict == Verdict.OK
        body = len(pkt) - 8 - iv_len - icv
        # minimum padding: payload | pad | pad_len | nh aligned to the block size
        assert body % block == 0 and n + 2 <= body < n + 2 + block
        res = inb.decap(pkt)
        assert res.verdict == Verdict.OK, res
        assert res.payload == payload and res.next_header == 4 and res.spi == SPI
    assert out.counters.packets == inb.counters.packets == 7
    assert out.counters.bytes == inb.counters.bytes == sum((0, 1, 2, 3, 17, 100, 1500))


def test_aead_default_iv_is_sequence_number() -> None:
    c = cfg("aes-gcm-16", esn=True)
    out = EspOutbound(c, initial_seq=(7 << 32) + 9)
    _v, pkt = out.encap(b"x", 4)
    assert pkt[4:8] == struct.pack(">I", 9)  # only the low half travels
    assert pkt[8:16] == ((7 << 32) + 9).to_bytes(8, "big")


def test_cbc_default_iv_is_random() -> None:
    out = EspOutbound(cfg("aes-cbc"))
    ivs = {out.encap(b"x", 4)[1][8:24] for _ in range(4)}
    assert len(ivs) == 4


def test_padding_bytes_are_monotonic() -> None:
    # NULL encryption shows the trailer in clear: payload | 1,2,3.. | pad_len | nh
    out = EspOutbound(cfg("null", integ="hmac-sha1-96"))
    _v, pkt = out.encap(b"abcde", 17)
    assert pkt[8:-12] == b"abcde" + b"\x01" + b"\x01\x11"  # 5 + 1 + 2 = 8
    _v, pkt = out.encap(b"abcdefgh", 17)
    assert pkt[8:-12] == b"abcdefgh" + b"\x01\x02" + b"\x02\x11"


def test_hmac_icv_independent() -> None:
    """CBC + HMAC ICV = HMAC(SPI | seq | IV | ct [| seq_hi]) truncated, checked with hashlib."""
    for esn in (False, True):
        c = cfg("aes-cbc", 16, "hmac-sha512-256", esn=esn)
        out = EspOutbound(c, initial_seq=(3 << 32) + 1 if esn else 1)
        _v, pkt = out.encap(b"hello", 4, iv=b"\x00" * 16)
        mac_input = pkt[:-32] + (struct.pack(">I", 3) if esn else b"")
        assert pkt[-32:] == hmac.new(c.integ_key, mac_input, hashlib.sha512).digest()[:32]


@pytest.mark.parametrize("encr", ["aes-gcm-8", "aes-gcm-12"])
def test_truncated_gcm_icv_is_prefix_of_full_tag(encr: str) -> None:
    c = cfg(encr, 16)
    _v, pkt = EspOutbound(c).encap(b"data", 4)
    icv = ESP_ENCR[encr][4]
    full = AESGCM(c.enc_key[:16]).encrypt(c.enc_key[16:] + pkt[8:16], b"data\x01\x02\x02\x04", pkt[:8])
    assert pkt[16:] == full[: len(full) - 16 + icv]


def _fresh_pair(**kw: object) -> tuple[EspOutbound, EspInbound]:
    c = cfg(**kw)  # type: ignore[arg-type]
    return EspOutbound(c), EspInbound(c)


@pytest.mark.parametrize("suite", [("aes-gcm-16", None), ("aes-cbc", "hmac-sha1-96"), ("chacha20-poly1305", None)])
def test_flipped_bits(suite: tuple[str, str | None]) -> None:
    out, inb = _fresh_pair(encr=suite[0], integ=suite[1])
    _v, good = out.encap(b"payload bytes", 4)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x10
        res = inb.decap(bytes(bad))
        if i < 4:
            assert res.verdict == Verdict.UNKNOWN_SA
        elif i < 8:
            assert res.verdict in (Verdict.BAD_ICV, Verdict.REPLAY)
        else:
            assert res.verdict == Verdict.BAD_ICV, i
        assert res.payload == b""
    assert inb.counters.packets == 0
    assert inb.window.top == 0  # nothing moved the window
    assert inb.counters.unknown_sa == 4
    assert inb.counters.bad_icv + inb.counters.replay == len(good) - 4
    assert inb.decap(good).verdict == Verdict.OK  # the genuine packet still gets in


@pytest.mark.parametrize("suite", [("aes-gcm-16", None), ("aes-cbc", "hmac-sha256-128"), ("3des-cbc", "hmac-md5-96"),
                                   ("null", "hmac-sha384-192")])
def test_truncation_at_every_offset(suite: tuple[str, str | None]) -> None:
    out, inb = _fresh_pair(encr=suite[0], integ=suite[1])
    table = EspInboundTable()
    table.add(inb.cfg)
    _v, good = out.encap(b"x" * 40, 4)
    for n in range(len(good)):
        for decap in (inb.decap, table.decap):
            res = decap(good[:n])
            assert res.verdict in (Verdict.TOO_SHORT, Verdict.BAD_ALIGNMENT, Verdict.BAD_ICV), n
            assert res.payload == b""
    min_len = 8 + ESP_ENCR[suite[0]][2] + (ESP_ENCR[suite[0]][4] or ESP_INTEG[suite[1]][1]) + ESP_ENCR[suite[0]][3]  # type: ignore[index]
    assert inb.decap(good[: min_len - 1]).verdict == Verdict.TOO_SHORT
    assert table.counters.too_short == 8  # shorter than SPI | seq: no SA to blame
    c = table.counters_for(SPI)
    assert c.packets == 0 and c.too_short + c.bad_alignment + c.bad_icv == len(good) - 8
    assert table.decap(good).verdict == Verdict.OK


def test_bad_alignment() -> None:
    out, inb = _fresh_pair(encr="aes-cbc", integ="hmac-sha1-96")
    _v, good = out.encap(b"y" * 30, 4)
    res = inb.decap(good[:8] + good[8:-12] + b"\x00" + good[-12:])  # one extra ciphertext byte
    assert res.verdict == Verdict.BAD_ALIGNMENT and inb.counters.bad_alignment == 1


def test_unknown_spi_in_table() -> None:
    table = EspInboundTable()
    out = EspOutbound(cfg(spi=0x5000))
    _v, pkt = out.encap(b"z", 4)
    res = table.decap(pkt)
    assert res.verdict == Verdict.UNKNOWN_SA and res.spi == 0x5000
    assert table.counters.unknown_sa == 1
    table.add(cfg(spi=0x5000))
    assert table.decap(pkt).verdict == Verdict.OK
    table.remove(0x5000)
    assert table.decap(pkt).verdict == Verdict.UNKNOWN_SA and table.counters.unknown_sa == 2


def test_table_errors_and_batch() -> None:
    table = EspInboundTable()
    a, b = cfg(spi=0x1000), cfg("aes-cbc", spi=0x2000)
    table.add(a)
    table.add(b)
    with pytest.raises(ConfigError, match="already exists"):
        table.add(a)
    with pytest.raises(ConfigError, match="no inbound SA"):
        table.remove(0x3000)
    with pytest.raises(ConfigError):
        table.counters_for(0x3000)
    pa, pb = EspOutbound(a), EspOutbound(b)
    pkts = [pa.encap(b"a1", 4)[1], pb.encap(b"b1", 41)[1], pa.encap(b"a2", 4)[1], b"\x00" * 3]
    res = table.decap_batch(pkts)
    assert [r.verdict for r in res] == [Verdict.OK, Verdict.OK, Verdict.OK, Verdict.TOO_SHORT]
    assert [r.payload for r in res[:3]] == [b"a1", b"b1", b"a2"]
    assert table.counters_for(0x1000).packets == 2 and table.counters_for(0x2000).packets == 1


def _aead_packet(c: EspSaConfig, seq: int, plaintext: bytes) -> bytes:
    """Hand-built AES-GCM ESP packet (independent of the reference encap)."""
    header = struct.pack(">II", c.spi, seq)
    iv = seq.to_bytes(8, "big")
    return header + iv + AESGCM(c.enc_key[:-4]).encrypt(c.enc_key[-4:] + iv, plaintext, header)


def _cbc_packet(c: EspSaConfig, seq: int, plaintext: bytes) -> bytes:
    header = struct.pack(">II", c.spi, seq)
    iv = bytes(16)
    enc = Cipher(algorithms.AES(c.enc_key), modes.CBC(iv)).encryptor()
    body = header + iv + enc.update(plaintext) + enc.finalize()
    return body + hmac.new(c.integ_key, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("plaintext", [
    b"abcd" + b"\x01\x03" + b"\x02\x04",  # pad bytes 1,3 instead of 1,2
    b"abcd" + b"\x02\x01" + b"\x02\x04",  # 2,1
    b"\x00\x00" + b"\x07\x04",  # pad_len 7 > plaintext_len - 2
    b"\x01\x02\x03\x04\x05\x06" + b"\x07\x04",  # pad_len 7 > 6
])
def test_bad_padding_with_valid_icv_gcm(plaintext: bytes) -> None:
    c = cfg("aes-gcm-16", 16)
    inb = EspInbound(c)
    res = inb.decap(_aead_packet(c, 1, plaintext))
    assert res.verdict == Verdict.BAD_PADDING and res.payload == b""
    assert inb.counters.bad_padding == 1 and inb.counters.packets == 0
    assert inb.window.top == 0  # a bad packet never moves the window


def test_bad_padding_with_valid_icv_cbc() -> None:
    c = cfg("aes-cbc", 16, "hmac-sha256-128")
    inb = EspInbound(c)
    bad = b"q" * 10 + bytes([1, 2, 3, 5]) + b"\x04\x04"  # 16 bytes, pad 1,2,3,5
    assert inb.decap(_cbc_packet(c, 1, bad)).verdict == Verdict.BAD_PADDING
    good = b"q" * 10 + bytes([1, 2, 3, 4]) + b"\x04\x04"
    res = inb.decap(_cbc_packet(c, 1, good))
    assert res.verdict == Verdict.OK and res.payload == b"q" * 10  # same seq: window was untouched


def test_tfc_dummy() -> None:
    out, inb = _fresh_pair()
    _v, dummy = out.encap(b"\x00" * 64, 59)
    res = inb.decap(dummy)
    assert res.verdict == Verdict.TFC_DUMMY and res.payload == b"" and res.seq == 1
    assert inb.counters.tfc_dummy == 1 and inb.counters.packets == 0 and inb.counters.bytes == 0
    assert inb.decap(dummy).verdict == Verdict.REPLAY  # the window was committed


def test_replay_duplicate_and_too_old() -> None:
    out, inb = _fresh_pair(replay_window=64)
    pkts = [out.encap(bytes([i]), 4)[1] for i in range(100)]
    assert inb.decap(pkts[99]).verdict == Verdict.OK  # seq 100
    assert inb.decap(pkts[99]).verdict == Verdict.REPLAY  # duplicate
    assert inb.decap(pkts[36]).verdict == Verdict.OK  # seq 37: 100 - 37 = 63, inside
    assert inb.decap(pkts[35]).verdict == Verdict.REPLAY  # seq 36: older than the window
    assert inb.decap(pkts[36]).verdict == Verdict.REPLAY
    assert inb.counters.replay == 3 and inb.counters.packets == 2


def test_forged_packet_does_not_move_window() -> None:
    out, inb = _fresh_pair(replay_window=32)
    pkts = [out.encap(b"p", 4)[1] for _ in range(200)]
    forged = bytearray(pkts[199])
    forged[-1] ^= 1
    assert inb.decap(bytes(forged)).verdict == Verdict.BAD_ICV
    assert inb.window.top == 0
    assert inb.decap(pkts[0]).verdict == Verdict.OK  # seq 1 would be too old had seq 200 committed
    assert inb.decap(pkts[199]).verdict == Verdict.OK


@pytest.mark.parametrize("window", [0, 64, 4096])
def test_window_sizes_end_to_end(window: int) -> None:
    out, inb = _fresh_pair(replay_window=window)
    pkts = [out.encap(b"w", 4)[1] for _ in range(window + 10 if window else 10)]
    for p in reversed(pkts):
        inb.decap(p)
    dup = inb.decap(pkts[-1])
    if window == 0:
        assert inb.counters.packets == len(pkts) + 1 and dup.verdict == Verdict.OK
    else:
        # arriving newest-first, everything more than window-1 behind the newest is too old
        assert inb.counters.packets == window and inb.counters.replay == 11
        assert dup.verdict == Verdict.REPLAY


def test_esn_across_2_pow_32() -> None:
    c = cfg("aes-gcm-16", esn=True, replay_window=64)
    out, inb = EspOutbound(c, initial_seq=M32 - 1), EspInbound(c, replay_top=M32 - 2)
    pkts = [out.encap(bytes([i]), 4)[1] for i in range(4)]
    assert [p[4:8] for p in pkts] == [b"\xff\xff\xff\xfe", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                      b"\x00\x00\x00\x01"]
    res = [inb.decap(p) for p in (pkts[0], pkts[2], pkts[1], pkts[3])]
    assert [r.verdict for r in res] == [Verdict.OK] * 4
    assert [r.seq for r in res] == [M32 - 1, M32 + 1, M32, M32 + 2]
    assert inb.decap(pkts[2]).verdict == Verdict.REPLAY


def test_esn_hmac_covers_seq_hi() -> None:
    c = cfg("aes-cbc", integ="hmac-sha1-96", esn=True)
    _v, pkt = EspOutbound(c, initial_seq=(1 << 32) + 5).encap(b"esn", 4)
    assert EspInbound(c).decap(pkt).verdict == Verdict.BAD_ICV  # fresh window infers seq_hi 0
    res = EspInbound(c, replay_top=1 << 32).decap(pkt)
    assert res.verdict == Verdict.OK and res.seq == (1 << 32) + 5


def test_outbound_sequence_limit() -> None:
    c = cfg(seq_soft_margin=1)
    out = EspOutbound(c, initial_seq=M32 - 2)
    seen: list[ExpireEvent] = []
    for expected in ([], [ExpireEvent(SPI, "soft", "seq")], [ExpireEvent(SPI, "hard", "seq")]):
        verdict, _pkt = out.encap(b"s", 4)
        assert verdict == Verdict.OK
        evs = out.poll_events()
        assert evs == expected
        seen += evs
    assert out.next_seq == M32 + 1
    verdict, pkt = out.encap(b"s", 4)
    assert verdict == Verdict.EXHAUSTED and pkt == b""
    assert out.counters.exhausted == 1 and out.counters.packets == 3
    assert out.next_seq == M32 + 1 and out.poll_events() == []
    assert len(seen) == 2


def test_outbound_esn_limit_and_default_margin() -> None:
    c = cfg(esn=True)
    out = EspOutbound(c, initial_seq=(1 << 64) - 1)
    assert out.encap(b"", 4)[0] == Verdict.OK
    assert {(e.kind, e.reason) for e in out.poll_events()} == {("soft", "seq"), ("hard", "seq")}
    assert out.encap(b"", 4)[0] == Verdict.EXHAUSTED
    # non-ESN with the default margin 2^16: the soft event fires exactly at 2^16 remaining
    out = EspOutbound(cfg(), initial_seq=M32 - (1 << 16) - 1)
    out.encap(b"", 4)
    assert out.poll_events() == []
    out.encap(b"", 4)
    assert out.poll_events() == [ExpireEvent(SPI, "soft", "seq")]


def test_outbound_lifetime_packets_and_bytes() -> None:
    c = cfg(lifetime=Lifetime(soft_packets=2, hard_packets=3, soft_bytes=150, hard_bytes=250))
    out = EspOutbound(c)
    got = []
    for _ in range(3):
        assert out.encap(b"b" * 100, 4)[0] == Verdict.OK
        got.append({(e.kind, e.reason) for e in out.poll_events()})
    assert got == [set(), {("soft", "packets"), ("soft", "bytes")}, {("hard", "packets"), ("hard", "bytes")}]
    for _ in range(2):
        assert out.encap(b"b", 4) == (Verdict.EXHAUSTED, b"")
    assert out.counters.exhausted == 2 and out.poll_events() == []
    assert out.next_seq == 4


def test_outbound_hard_bytes_refuses_after_reaching() -> None:
    out = EspOutbound(cfg(lifetime=Lifetime(hard_bytes=10)))
    assert out.encap(b"x" * 9, 4)[0] == Verdict.OK
    assert out.encap(b"x" * 9, 4)[0] == Verdict.OK  # counters before it (9) had not reached 10
    assert out.poll_events() == [ExpireEvent(SPI, "hard", "bytes")]
    assert out.encap(b"x", 4)[0] == Verdict.EXHAUSTED


def test_inbound_lifetime() -> None:
    c = cfg(lifetime=Lifetime(soft_packets=1, hard_packets=2))
    out, inb = EspOutbound(cfg()), EspInbound(c)  # same keys, the sender has no lifetime
    pkts = [out.encap(b"i", 4)[1] for _ in range(3)]
    assert inb.decap(pkts[0]).verdict == Verdict.OK
    assert inb.poll_events() == [ExpireEvent(SPI, "soft", "packets")]
    assert inb.decap(pkts[1]).verdict == Verdict.OK
    assert inb.poll_events() == [ExpireEvent(SPI, "hard", "packets")]
    assert inb.decap(pkts[2]).verdict == Verdict.EXHAUSTED
    assert inb.counters.exhausted == 1 and inb.poll_events() == []
    table = EspInboundTable()
    table.add(c)
    table.decap(pkts[0])
    assert table.poll_events() == [ExpireEvent(SPI, "soft", "packets")]


def test_counters_total() -> None:
    out, inb = _fresh_pair()
    pkts = [out.encap(b"c" * 20, 4)[1] for _ in range(5)]
    inb.decap_batch(pkts + [pkts[0], pkts[1][:10], b"\xff" * 3])
    assert inb.counters == SaCounters(packets=5, bytes=100, replay=1, too_short=2)


def test_batch_equals_single() -> None:
    c = cfg("aes-cbc", 32, "hmac-sha384-192")
    ivs = [bytes([i]) * 16 for i in range(5)]
    payloads = [bytes([i]) * (i * 7) for i in range(5)]
    single = [EspOutbound(c)]
    one = [single[0].encap(p, 41, iv=iv) for p, iv in zip(payloads, ivs, strict=True)]
    assert EspOutbound(c).encap_batch(payloads, 41, ivs=ivs) == one
    assert [r.payload for r in EspInbound(c).decap_batch([p for _v, p in one])] == payloads


def test_user_mistakes_are_clear_errors() -> None:
    out = EspOutbound(cfg())
    with pytest.raises(ValueError, match="iv"):
        out.encap(b"x", 4, iv=b"short")
    with pytest.raises(ValueError, match="next_header"):
        out.encap(b"x", 256)
    with pytest.raises(ValueError, match="ivs"):
        out.encap_batch([b"x"], 4, ivs=[])
    with pytest.raises(ConfigError, match="initial_seq"):
        EspOutbound(cfg(), initial_seq=0)
    with pytest.raises(ConfigError, match="initial_seq"):
        EspOutbound(cfg(), initial_seq=1 << 32)
    with pytest.raises(ConfigError, match="replay_top"):
        EspInbound(cfg(), replay_top=1 << 32)
    assert out.counters == SaCounters()  # mistakes do not consume sequence numbers
    assert out.next_seq == 1


def test_every_suite_combination_counted() -> None:
    # 4 AEAD names with their key sizes + (3 AES-CBC sizes + 3DES + NULL) x 5 HMACs
    assert len(SUITES) == 3 * 3 + 1 + (3 + 1 + 1) * 5
    assert len(set(itertools.chain.from_iterable(s[2:] for s in SUITES)) - {None}) == 5


def test_esn_too_old_reads_as_next_epoch() -> None:
    """RFC 4303 A2.2: with ESN a wire value below the window is taken as the *next* seq_hi, so
    an old packet fails authentication (BAD_ICV) instead of REPLAY; the window stays put."""
    c = cfg(esn=True, replay_window=64)
    out, inb = EspOutbound(c), EspInbound(c)
    pkts = [out.encap(b"o", 4)[1] for _ in range(200)]
    assert inb.decap(pkts[199]).verdict == Verdict.OK
    assert inb.decap(pkts[0]).verdict == Verdict.BAD_ICV
    assert inb.window.top == 200 and inb.counters.bad_icv == 1


def test_bytes_like_input() -> None:
    out, inb = _fresh_pair(encr="null", integ="hmac-sha1-96")
    _v, pkt = out.encap(bytearray(b"ba"), 4)
    res = inb.decap(bytearray(pkt))
    assert res.verdict == Verdict.OK and type(res.payload) is bytes and res.payload == b"ba"


_FUZZ_SUITES = [("aes-gcm-16", None), ("aes-gcm-8", None), ("aes-cbc", "hmac-sha1-96"), ("null", "hmac-md5-96"),
                ("3des-cbc", "hmac-sha256-128"), ("chacha20-poly1305", None)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), suite=st.sampled_from(_FUZZ_SUITES), esn=st.booleans())
def test_fuzz_never_raises(data: st.DataObject, suite: tuple[str, str | None], esn: bool) -> None:
    """Random bytes, and valid packets with random edits, always get a verdict and a counter."""
    c = cfg(suite[0], integ=suite[1], esn=esn)
    table = EspInboundTable()
    inb = table.add(c)
    _v, good = EspOutbound(c).encap(data.draw(st.binary(max_size=64)), 4)
    raw = data.draw(st.binary(max_size=120))
    pos = data.draw(st.integers(0, len(good) - 1))
    edited = good[:pos] + data.draw(st.binary(min_size=0, max_size=3)) + good[pos + 1:]
    prefixed = struct.pack(">I", SPI) + raw
    for pkt in (raw, edited, prefixed):
        res = table.decap(pkt)
        assert isinstance(res.verdict, Verdict)
        if res.verdict != Verdict.OK:
            assert res.payload == b""
    total = inb.counters
    drops = (total.bad_icv + total.replay + total.too_short + total.bad_padding + total.bad_alignment
             + total.unknown_sa + total.tfc_dummy + total.exhausted)
    assert total.packets + drops + table.counters.too_short + table.counters.unknown_sa == 3
