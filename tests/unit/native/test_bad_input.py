"""Bad input on the C path: every failure gives the right verdict and counter, delivers
nothing, and never crashes (the ASan test re-runs this file under the sanitizers)."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SaCounters, SecYConfig, Verdict

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")

SPI = 0x1001
GCM = EspSaConfig(spi=SPI, encr="aes-gcm-12", enc_key=bytes(range(20)), replay_window=32)
CBC = EspSaConfig(spi=SPI, encr="aes-cbc", enc_key=bytes(range(32)), integ="hmac-sha256-128",
                  integ_key=bytes(range(32)), replay_window=32)
ESN = EspSaConfig(spi=SPI, encr="aes-gcm-16", enc_key=bytes(range(36)), esn=True, replay_window=64)
SUITES = pytest.mark.parametrize("cfg", [GCM, CBC, ESN], ids=["gcm12", "cbc-sha256", "gcm16-esn"])


def drops(c: SaCounters) -> int:
    return c.packets + sum(getattr(c, f) for f in (
        "bad_icv", "replay", "too_short", "bad_padding", "bad_alignment", "exhausted", "unknown_sa"))


def encap(cfg: EspSaConfig, n: int = 1, payload: bytes = b"inner packet", start: int = 1) -> list[bytes]:
    out = native.EspOutbound(cfg, initial_seq=start)
    return [out.encap(payload, 4)[1] for _ in range(n)]


@SUITES
def test_esp_every_bit_flip_is_rejected(cfg: EspSaConfig) -> None:
    pkt = encap(cfg)[0]
    inb = native.EspInbound(cfg)
    results = []
    for i in range(len(pkt)):
        for bit in (0, 7):
            bad = bytearray(pkt)
            bad[i] ^= 1 << bit
            results.append(inb.decap(bytes(bad)))
    assert all(r.verdict is not Verdict.OK and r.payload == b"" for r in results)
    assert {r.verdict for r in results[:8]} == {Verdict.UNKNOWN_SA}  # SPI bytes
    assert Verdict.BAD_ICV in {r.verdict for r in results[8:]}
    c = inb.counters
    assert c.packets == 0 and c.unknown_sa == 8 and drops(c) == len(results)
    # the window never moved: the genuine packet is still accepted
    assert inb.decap(pkt).verdict is Verdict.OK


@SUITES
def test_esp_truncation_at_every_offset(cfg: EspSaConfig) -> None:
    pkt = encap(cfg)[0]
    table = native.EspInboundTable()
    table.add(cfg)
    res = [table.decap(pkt[:i]) for i in range(len(pkt))]
    assert all(r.verdict in (Verdict.TOO_SHORT, Verdict.BAD_ALIGNMENT, Verdict.BAD_ICV) for r in res)
    assert all(r.payload == b"" for r in res)
    assert [r.verdict for r in res[:8]] == [Verdict.TOO_SHORT] * 8
    assert table.counters.too_short == 8  # too short to carry an SPI: table-wide
    per_sa = table.counters_for(SPI)
    assert per_sa.too_short + per_sa.bad_alignment + per_sa.bad_icv == len(pkt) - 8
    assert table.decap(pkt).verdict is Verdict.OK


@SUITES
def test_esp_replay_duplicate_and_too_old(cfg: EspSaConfig) -> None:
    pkts = encap(cfg, 100)
    inb = native.EspInbound(cfg)
    assert inb.decap(pkts[99]).verdict is Verdict.OK  # seq 100
    window = cfg.replay_window
    in_window = pkts[100 - window]        # seq 100 - window + 1: oldest still acceptable
    too_old = pkts[100 - window - 1]      # seq 100 - window: just out
    # ESN (RFC 4303 A2.2): a wire seq below the window is taken as the next seq_hi epoch,
    # so the stale packet fails authentication instead
    assert inb.decap(too_old).verdict is (Verdict.BAD_ICV if cfg.esn else Verdict.REPLAY)
    assert inb.decap(in_window).verdict is Verdict.OK
    assert inb.decap(in_window).verdict is Verdict.REPLAY  # in-window duplicate
    assert inb.decap(pkts[99]).verdict is Verdict.REPLAY
    c = inb.counters
    assert (c.packets, c.replay + c.bad_icv) == (2, 3)


def test_esp_forged_high_seq_does_not_move_window() -> None:
    pkts = encap(GCM, 3)
    forged = bytearray(encap(GCM, 1, start=5000)[0])
    forged[-1] ^= 1
    inb = native.EspInbound(GCM)
    assert inb.decap(bytes(forged)).verdict is Verdict.BAD_ICV
    assert [inb.decap(p).verdict for p in pkts] == [Verdict.OK] * 3


def test_esp_esn_crosses_seq_hi_boundary() -> None:
    start = (1 << 32) - 3
    pkts = encap(ESN, 6, start=start)
    inb = native.EspInbound(ESN, replay_top=start - 1)
    res = inb.decap_batch(pkts)
    assert [r.verdict for r in res] == [Verdict.OK] * 6
    assert [r.seq for r in res] == list(range(start, start + 6))
    assert inb.decap(pkts[0]).verdict is Verdict.REPLAY


def test_esp_unknown_spi_counted_table_wide() -> None:
    table = native.EspInboundTable()
    table.add(GCM)
    other = EspSaConfig(spi=0x2002, encr="aes-gcm-12", enc_key=bytes(20))
    res = table.decap(encap(other)[0])
    assert (res.verdict, res.spi, res.payload) == (Verdict.UNKNOWN_SA, 0x2002, b"")
    assert table.counters.unknown_sa == 1 and table.counters_for(SPI) == SaCounters()
    table.remove(SPI)
    assert table.decap(encap(GCM)[0]).verdict is Verdict.UNKNOWN_SA
    assert SPI not in table and len(table) == 0


def _gcm_packet(cfg: EspSaConfig, seq: int, plaintext: bytes) -> bytes:
    """An ESP packet built independently with pyca/cryptography (any trailer we like)."""
    key, salt = cfg.enc_key[:-4], cfg.enc_key[-4:]
    hdr = struct.pack(">II", cfg.spi, seq)
    iv = seq.to_bytes(8, "big")
    sealed = AESGCM(key).encrypt(salt + iv, plaintext, hdr)
    return hdr + iv + sealed[:len(plaintext) + 12]  # aes-gcm-12: truncated tag


def _cbc_packet(cfg: EspSaConfig, seq: int, plaintext: bytes) -> bytes:
    hdr = struct.pack(">II", cfg.spi, seq)
    iv = bytes(16)
    enc = Cipher(algorithms.AES(cfg.enc_key), modes.CBC(iv)).encryptor()
    body = hdr + iv + enc.update(plaintext) + enc.finalize()
    return body + hmac.new(cfg.integ_key, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("build,cfg,block", [(_gcm_packet, GCM, 4), (_cbc_packet, CBC, 16)], ids=["gcm", "cbc"])
def test_esp_bad_padding_and_tfc(build: Callable[[EspSaConfig, int, bytes], bytes], cfg: EspSaConfig,
                                 block: int) -> None:
    body = b"P" * (block - 2)
    inb = native.EspInbound(cfg)
    wrong_bytes = build(cfg, 1, b"P" * (2 * block - 5) + b"\x01\x05\x03" + b"\x03\x04")  # pad 1,5,3
    too_long = build(cfg, 2, b"P" * (block - 2) + bytes([block, 4]))          # pad_len > len - 2
    tfc = build(cfg, 3, body + bytes([0, 59]))
    good = build(cfg, 4, body[:-2] + b"\x01\x02" + bytes([2, 4]))
    res = inb.decap_batch([wrong_bytes, too_long, tfc, good, tfc])
    assert [r.verdict for r in res] == [Verdict.BAD_PADDING, Verdict.BAD_PADDING, Verdict.TFC_DUMMY,
                                        Verdict.OK, Verdict.REPLAY]
    assert [r.payload for r in res] == [b"", b"", b"", body[:-2], b""]
    assert (res[2].next_header, res[2].seq) == (59, 3)
    c = inb.counters
    assert (c.bad_padding, c.tfc_dummy, c.packets, c.replay) == (2, 1, 1, 1)
    # a bad padding never moved the window: seq 1 and 2 stay acceptable
    assert inb.decap(build(cfg, 1, body + bytes([0, 4]))).verdict is Verdict.OK


def test_esp_bad_alignment() -> None:
    pkt = encap(CBC)[0]
    inb = native.EspInbound(CBC)
    bad = pkt[:-16] + b"\0" * 4 + pkt[-16:]
    assert inb.decap(bad).verdict is Verdict.BAD_ALIGNMENT
    assert inb.counters.bad_alignment == 1


def test_esp_wrapper_rejects_bad_arguments() -> None:
    out = native.EspOutbound(GCM)
    with pytest.raises(ValueError, match="next_header"):
        out.encap(b"x", 256)
    with pytest.raises(ValueError, match="iv"):
        out.encap(b"x", 4, iv=b"short")
    with pytest.raises(ValueError, match="ivs"):
        out.encap_batch([b"x", b"y"], 4, ivs=[bytes(8)])
    assert out.next_seq == 1 and out.counters == SaCounters()


# ---------------------------------------------------------------------------- MACsec

SCI = bytes.fromhex("0200000000010001")
SA = MacsecSaConfig(cipher="gcm-aes-128", sak=bytes(range(16)), sci=SCI, an=1)
XPN = MacsecSaConfig(cipher="gcm-aes-xpn-256", sak=bytes(32), sci=SCI, an=2, ssci=1, salt=bytes(range(12)))
FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x00" + bytes(range(50))


@pytest.mark.parametrize("sa", [SA, XPN], ids=["gcm128", "xpn256"])
@pytest.mark.parametrize("conf,sci", [(True, True), (False, True), (True, False), (False, False)])
def test_macsec_every_bit_flip_and_truncation_rejected(sa: MacsecSaConfig, conf: bool, sci: bool) -> None:
    secy = SecYConfig(confidentiality=conf, include_sci=sci)
    prot = native.MacsecTx(secy, sa).protect(FRAME)[1]
    rx = native.MacsecRx(secy)
    rx.add_sa(sa)
    flipped = []
    for i in range(len(prot)):
        bad = bytearray(prot)
        bad[i] ^= 0x10
        flipped.append(bytes(bad))
    res = rx.validate_batch(flipped + [prot[:i] for i in range(len(prot))])
    assert all(r.verdict is not Verdict.OK and r.frame == b"" for r in res)
    assert {r.verdict for r in res[len(prot):]} <= {Verdict.TOO_SHORT, Verdict.BAD_HEADER, Verdict.BAD_ICV}
    assert res[12].verdict is Verdict.NOT_PROTECTED  # EtherType flipped
    total = rx.counters
    per_sa = rx.counters_for(sa.sci, sa.an)
    assert per_sa.packets == 0
    assert drops(total) + drops(per_sa) + total.bad_header + per_sa.bad_header + total.not_protected == len(res)
    assert rx.validate(prot).frame == FRAME  # nothing moved the PN window


def test_macsec_replay_window_and_too_old() -> None:
    secy = SecYConfig(replay_window=4)
    tx = native.MacsecTx(secy, SA)
    frames = [tx.protect(FRAME)[1] for _ in range(10)]
    rx = native.MacsecRx(secy)
    rx.add_sa(SA)
    assert rx.validate(frames[9]).pn == 10
    res = rx.validate_batch([frames[4], frames[5], frames[8]])  # PN 5 < lowest 11-4=7; PN 6 too; 9 ok
    assert [r.verdict for r in res] == [Verdict.REPLAY, Verdict.REPLAY, Verdict.OK]
    strict = native.MacsecRx(SecYConfig())
    strict.add_sa(SA)
    assert [strict.validate(f).verdict for f in (frames[0], frames[0])] == [Verdict.OK, Verdict.REPLAY]
    assert strict.counters_for(SCI, 1).replay == 1


def test_macsec_unknown_sci_pn_zero_and_modes() -> None:
    secy = SecYConfig()
    prot = native.MacsecTx(secy, SA).protect(FRAME)[1]
    rx = native.MacsecRx(secy)
    assert rx.validate(prot).verdict is Verdict.UNKNOWN_SA and rx.counters.unknown_sa == 1
    rx.add_sa(SA)
    pn0 = prot[:16] + bytes(4) + prot[20:]
    r = rx.validate(pn0)
    assert (r.verdict, r.pn, r.sci) == (Verdict.BAD_HEADER, 0, SCI)
    assert rx.validate(FRAME).verdict is Verdict.NOT_PROTECTED and rx.counters.not_protected == 1
    # check mode: an integrity-only frame with a bad ICV is handed on but flagged
    check = SecYConfig(validate="check", confidentiality=False)
    prot_i = bytearray(native.MacsecTx(check, SA).protect(FRAME)[1])
    prot_i[-1] ^= 1
    rx_c = native.MacsecRx(check)
    rx_c.add_sa(SA)
    r = rx_c.validate(bytes(prot_i))
    assert (r.verdict, r.frame) == (Verdict.BAD_ICV, FRAME)
    assert rx_c.validate(FRAME) == rx_c.validate(FRAME)  # untagged passes unchanged
    assert rx_c.validate(FRAME).frame == FRAME
    with pytest.raises(ValueError, match="sci/an"):
        rx_c.remove_sa(bytes(8), 0)


def test_macsec_xpn_recovers_pn_across_2_32() -> None:
    start = (1 << 32) - 2
    sa = MacsecSaConfig(cipher="gcm-aes-xpn-128", sak=bytes(16), sci=SCI, an=0, ssci=9, salt=bytes(12),
                        next_pn=start)
    secy = SecYConfig()
    tx = native.MacsecTx(secy, sa)
    frames = [tx.protect(FRAME)[1] for _ in range(4)]
    rx = native.MacsecRx(secy)
    rx.add_sa(sa)
    res = rx.validate_batch(frames)
    assert [(r.verdict, r.pn) for r in res] == [(Verdict.OK, start + i) for i in range(4)]
    assert rx.next_pn_for(SCI, 0) == start + 4


def test_macsec_too_short_tx() -> None:
    tx = native.MacsecTx(SecYConfig(), SA)
    assert tx.protect(b"\x00" * 13) == (Verdict.TOO_SHORT, b"")
    assert tx.counters.too_short == 1 and tx.next_pn == 1


def test_macsec_add_sa_replaces_and_remove() -> None:
    secy = SecYConfig()
    tx = native.MacsecTx(secy, SA)
    frames = [tx.protect(FRAME)[1] for _ in range(3)]
    rx = native.MacsecRx(secy)
    rx.add_sa(SA)
    assert rx.validate(frames[2]).verdict is Verdict.OK and rx.next_pn_for(SCI, 1) == 4
    rx.add_sa(SA)  # an AN reused for a new SAK: the SA starts over
    assert rx.next_pn_for(SCI, 1) == 1 and rx.counters_for(SCI, 1) == SaCounters()
    assert rx.validate(frames[0]).verdict is Verdict.OK
    rx.remove_sa(SCI, 1)
    assert rx.validate(frames[1]).verdict is Verdict.UNKNOWN_SA
    with pytest.raises(ValueError, match="sci/an"):
        rx.counters_for(SCI, 1)
