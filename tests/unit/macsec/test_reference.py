"""Behaviour of the reference MACsec SecY on hostile and edge-case input (api.py semantics)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import ExpireEvent, MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.macsec import sectag
from ipsecemu.macsec.reference import MacsecRx, MacsecTx
from ipsecemu.macsec.sectag import SecTag, implicit_sci, parse
from ipsecemu.macsec.xpn import recover_pn

DA = bytes.fromhex("020000000002")
SA_MAC = bytes.fromhex("020000000001")
SCI = SA_MAC + b"\x00\x05"
SAK = bytes(range(16))
SALT = bytes(range(100, 112))
LONG = DA + SA_MAC + b"\x08\x00" + bytes(range(100))  # secure data 102 bytes -> SL 0
SHORT = DA + SA_MAC + b"\x08\x00" + b"abc"  # secure data 5 bytes -> SL 5
DROPS = {Verdict.BAD_ICV, Verdict.BAD_HEADER, Verdict.UNKNOWN_SA, Verdict.REPLAY, Verdict.TOO_SHORT,
         Verdict.NOT_PROTECTED}


def sa_cfg(cipher: str = "gcm-aes-128", next_pn: int = 1, an: int = 0, sci: bytes = SCI) -> MacsecSaConfig:
    xpn = "xpn" in cipher
    key = SAK if cipher.endswith("128") else SAK * 2
    return MacsecSaConfig(cipher=cipher, sak=key, sci=sci, an=an, ssci=7 if xpn else None,
                          salt=SALT if xpn else None, next_pn=next_pn)


def pair(secy: SecYConfig | None = None, **kw: object) -> tuple[MacsecTx, MacsecRx, MacsecSaConfig]:
    secy = secy or SecYConfig()
    sa = sa_cfg(**kw)  # type: ignore[arg-type]
    rx = MacsecRx(secy)
    rx.add_sa(sa)
    return MacsecTx(secy, sa), rx, sa


def sealed(tx: MacsecTx, frame: bytes = LONG) -> bytes:
    verdict, out = tx.protect(frame)
    assert verdict is Verdict.OK
    return out


# --- SecTAG codec -----------------------------------------------------------------------------

def test_sectag_layout() -> None:
    tx, _, _ = pair()
    short = sealed(tx, SHORT)
    assert short[12:14] == b"\x88\xe5"
    assert short[14] == sectag.TCI_SC | sectag.TCI_E | sectag.TCI_C  # AN 0
    assert short[15] == 5  # SL
    assert short[16:20] == (1).to_bytes(4, "big")
    assert short[20:28] == SCI
    assert len(short) == 12 + 16 + 5 + 16
    long_ = sealed(tx, LONG)
    assert long_[15] == 0 and long_[16:20] == (2).to_bytes(4, "big")


def test_end_station_tag_and_implicit_sci() -> None:
    secy = SecYConfig(include_sci=False, end_station=True)
    tx, rx, sa = pair(secy, sci=implicit_sci(SA_MAC))
    out = sealed(tx)
    assert out[14] == sectag.TCI_ES | sectag.TCI_E | sectag.TCI_C
    assert len(out) == 12 + 8 + 102 + 16
    res = rx.validate(out)
    assert (res.verdict, res.frame, res.sci) == (Verdict.OK, LONG, implicit_sci(SA_MAC))
    # include_sci wins over end_station: ES must never be set together with SC.
    tx2 = MacsecTx(SecYConfig(include_sci=True, end_station=True), sa)
    assert sealed(tx2)[14] & sectag.TCI_ES == 0


def test_sectag_roundtrip_and_encode_checks() -> None:
    tag = SecTag(an=3, pn=0xDEADBEEF, sl=7, sci=SCI, e=True, c=True)
    assert len(tag) == 16
    frame = DA + SA_MAC + tag.encode() + b"x" * 7 + b"i" * 16
    p = parse(frame)
    assert p.verdict is Verdict.OK and p.tag == tag
    assert p.secure_data == b"x" * 7 and p.icv == b"i" * 16
    with pytest.raises(ValueError):
        SecTag(an=4, pn=1).encode()
    with pytest.raises(ValueError):
        SecTag(an=0, pn=1 << 32).encode()


@pytest.mark.parametrize(
    ("tci", "sl", "secure_len", "why"),
    [
        (sectag.TCI_V | sectag.TCI_SC, 0, 60, "V=1"),
        (sectag.TCI_ES | sectag.TCI_SC, 0, 60, "ES with SC"),
        (sectag.TCI_SCB | sectag.TCI_SC, 0, 60, "SCB with SC"),
        (sectag.TCI_E, 0, 60, "E without C"),
        (sectag.TCI_SC, 48, 60, "SL >= 48"),
        (sectag.TCI_SC, 0xC0, 60, "reserved SL bits"),
        (sectag.TCI_SC, 10, 11, "SL != secure length"),
        (sectag.TCI_SC, 0, 47, "SL 0 with short secure data"),
    ],
)
def test_bad_header_combinations(tci: int, sl: int, secure_len: int, why: str) -> None:
    tx, rx, sa = pair()
    has_sci = bool(tci & sectag.TCI_SC)
    frame = DA + SA_MAC + bytes([0x88, 0xE5, tci, sl]) + (5).to_bytes(4, "big")
    frame += (SCI if has_sci else b"") + b"d" * secure_len + b"i" * 16
    assert parse(frame).verdict is Verdict.BAD_HEADER, why
    assert rx.validate(frame).verdict is Verdict.BAD_HEADER, why
    assert rx.counters.bad_header == 1
    assert rx.counters_for(sa.sci, sa.an).packets == 0


def test_scb_without_sc_is_accepted_by_parse() -> None:
    frame = DA + SA_MAC + bytes([0x88, 0xE5, sectag.TCI_SCB, 0]) + (5).to_bytes(4, "big") + b"d" * 60 + b"i" * 16
    p = parse(frame)
    assert p.verdict is Verdict.OK and p.tag is not None and p.tag.scb and not p.tag.sc


# --- tampering and truncation -------------------------------------------------------------------

@pytest.mark.parametrize("conf", [True, False], ids=["conf", "integ"])
@pytest.mark.parametrize("cipher", ["gcm-aes-128", "gcm-aes-xpn-256"])
def test_every_single_bit_flip_is_dropped(conf: bool, cipher: str) -> None:
    tx, rx, sa = pair(SecYConfig(confidentiality=conf), cipher=cipher, next_pn=5)
    frame = sealed(tx, SHORT + b"0123456789")
    for i in range(len(frame)):
        for bit in range(8):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            res = rx.validate(bytes(bad))
            assert res.verdict in DROPS, (i, bit, res.verdict)
            assert res.frame == b""
            if i >= len(frame) - 16 or 28 <= i < len(frame) - 16:  # ICV or secure data
                assert res.verdict is Verdict.BAD_ICV
            if i == 14 and bit == 7:  # V
                assert res.verdict is Verdict.BAD_HEADER
            if i in (12, 13):  # EtherType
                assert res.verdict is Verdict.NOT_PROTECTED
            if 20 <= i < 28 or (i == 14 and bit < 2):  # SCI or AN
                assert res.verdict is Verdict.UNKNOWN_SA
    # Nothing above moved the window: the genuine frame is still accepted, exactly once.
    assert rx.validate(frame).verdict is Verdict.OK
    c = rx.counters_for(sa.sci, sa.an)
    assert c.packets == 1 and c.bad_icv > 0


@pytest.mark.parametrize("mode", ["strict", "check", "disabled"])
@pytest.mark.parametrize("include_sci", [True, False])
def test_truncation_at_every_offset(mode: str, include_sci: bool) -> None:
    secy = SecYConfig(validate=mode, include_sci=include_sci)
    tx, rx, sa = pair(secy, sci=SCI if include_sci else implicit_sci(SA_MAC))
    for frame in (sealed(tx, SHORT), sealed(tx, LONG)):
        for k in range(len(frame)):
            res = rx.validate(frame[:k])
            assert res.verdict in DROPS, (k, res.verdict)
            if k < 12 + 8 + (8 if include_sci else 0) + 16:  # no room for SecTAG + ICV
                assert res.verdict is Verdict.TOO_SHORT, k
            else:  # the SL / length check or the ICV catches the rest
                assert res.verdict in (Verdict.BAD_HEADER, Verdict.BAD_ICV), k
    assert rx.counters_for(sa.sci, sa.an).packets == 0


def test_protect_too_short() -> None:
    tx, _, _ = pair()
    for k in range(14):
        assert tx.protect(LONG[:k]) == (Verdict.TOO_SHORT, b"")
    assert tx.counters.too_short == 14 and tx.next_pn == 1
    assert tx.protect(LONG[:14])[0] is Verdict.OK  # an EtherType alone is a (tiny) frame


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.sampled_from(["strict", "check", "disabled"]))
def test_random_bytes_never_raise(data: bytes, mode: str) -> None:
    rx = MacsecRx(SecYConfig(validate=mode))
    rx.add_sa(sa_cfg())
    rx.add_sa(sa_cfg("gcm-aes-xpn-128", sci=implicit_sci(SA_MAC)))
    for frame in (data, DA + SA_MAC + b"\x88\xe5" + data):
        res = rx.validate(frame)
        assert isinstance(res.verdict, Verdict)


# --- replay -------------------------------------------------------------------------------------

def test_window_zero_rejects_duplicates_and_reordering() -> None:
    tx, rx, sa = pair()
    f1, f2, f3 = (sealed(tx) for _ in range(3))
    assert rx.validate(f1).verdict is Verdict.OK
    assert rx.validate(f1).verdict is Verdict.REPLAY
    assert rx.validate(f3).verdict is Verdict.OK
    assert rx.validate(f2).verdict is Verdict.REPLAY  # older than the last one: strict ordering
    c = rx.counters_for(sa.sci, sa.an)
    assert (c.packets, c.replay) == (2, 2)
    assert rx.next_pn_for(sa.sci, sa.an) == 4


def test_window_accepts_late_frames_and_drops_too_old() -> None:
    tx, rx, sa = pair(SecYConfig(replay_window=2))
    frames = {pn: sealed(tx) for pn in range(1, 11)}
    assert rx.validate(frames[10]).verdict is Verdict.OK  # lowest acceptable is now 11 - 2 = 9
    assert rx.validate(frames[9]).verdict is Verdict.OK
    assert rx.validate(frames[8]).verdict is Verdict.REPLAY
    assert rx.validate(frames[1]).verdict is Verdict.REPLAY
    # As in 802.1AE, duplicates above the lowest acceptable PN are not detected.
    assert rx.validate(frames[9]).verdict is Verdict.OK
    assert rx.counters_for(sa.sci, sa.an).replay == 2


def test_replay_protect_off_accepts_old_frames() -> None:
    tx, rx, _ = pair(SecYConfig(replay_protect=False))
    f1, f2 = sealed(tx), sealed(tx)
    assert [rx.validate(f).verdict for f in (f2, f1, f1)] == [Verdict.OK] * 3


def test_rx_lowest_acceptable_pn_from_config() -> None:
    tx, _, sa = pair(next_pn=50)
    early = sealed(MacsecTx(SecYConfig(), replace(sa, next_pn=49)))
    rx = MacsecRx(SecYConfig())
    rx.add_sa(sa)
    assert rx.validate(early).verdict is Verdict.REPLAY
    assert rx.validate(sealed(tx)).verdict is Verdict.OK


def test_wire_pn_zero_is_bad_header() -> None:
    tx, rx, sa = pair()
    frame = bytearray(sealed(tx))
    frame[16:20] = b"\x00\x00\x00\x00"
    assert rx.validate(bytes(frame)).verdict is Verdict.BAD_HEADER
    assert rx.counters_for(sa.sci, sa.an).bad_header == 1


# --- SA table -----------------------------------------------------------------------------------

def test_unknown_sci_and_an() -> None:
    tx, rx, sa = pair()
    frame = sealed(tx)
    other_an = MacsecTx(SecYConfig(), replace(sa, an=2))
    other_sci = MacsecTx(SecYConfig(), replace(sa, sci=b"\x01" * 8))
    for f in (sealed(other_an), sealed(other_sci)):
        res = rx.validate(f)
        assert res.verdict is Verdict.UNKNOWN_SA
    assert rx.counters.unknown_sa == 2
    # Implicit SCI: a frame without SCI from another source MAC has no SA either.
    no_sci = MacsecTx(SecYConfig(include_sci=False), sa)
    assert rx.validate(sealed(no_sci)).verdict is Verdict.UNKNOWN_SA
    assert rx.validate(frame).verdict is Verdict.OK
    rx.remove_sa(sa.sci, sa.an)
    assert rx.validate(sealed(tx)).verdict is Verdict.UNKNOWN_SA
    with pytest.raises(ConfigError):
        rx.remove_sa(sa.sci, sa.an)
    with pytest.raises(ConfigError):
        rx.counters_for(sa.sci, sa.an)


def test_two_channels_and_an_switch() -> None:
    secy = SecYConfig()
    a, b = sa_cfg(sci=b"A" * 8), sa_cfg(sci=b"B" * 8, an=1)
    rx = MacsecRx(secy)
    rx.add_sa(a)
    rx.add_sa(b)
    fa, fb = sealed(MacsecTx(secy, a)), sealed(MacsecTx(secy, b))
    assert [r.verdict for r in rx.validate_batch([fa, fb])] == [Verdict.OK, Verdict.OK]
    assert rx.counters_for(a.sci, 0).packets == 1 and rx.counters_for(b.sci, 1).packets == 1
    # A new SAK on the next AN while the old one still drains.
    a2 = replace(a, an=1, sak=bytes(16))
    rx.add_sa(a2)
    assert rx.validate(sealed(MacsecTx(secy, a2))).verdict is Verdict.OK
    assert rx.validate(sealed(MacsecTx(secy, replace(a, next_pn=2)))).verdict is Verdict.OK


# --- validate modes -----------------------------------------------------------------------------

def test_untagged_frames_by_mode() -> None:
    plain = LONG
    strict = MacsecRx(SecYConfig(validate="strict"))
    assert strict.validate(plain).verdict is Verdict.NOT_PROTECTED
    assert strict.counters.not_protected == 1
    for mode in ("check", "disabled"):
        rx = MacsecRx(SecYConfig(validate=mode))
        res = rx.validate(plain)
        assert (res.verdict, res.frame) == (Verdict.OK, plain)
        assert rx.counters.not_protected == 0


@pytest.mark.parametrize("mode", ["strict", "check", "disabled"])
def test_bad_icv_by_mode(mode: str) -> None:
    secy_i = SecYConfig(validate=mode, confidentiality=False)
    tx, rx, sa = pair(secy_i)
    bad = bytearray(sealed(tx))
    bad[-1] ^= 0xFF
    res = rx.validate(bytes(bad))
    if mode == "strict":
        assert (res.verdict, res.frame) == (Verdict.BAD_ICV, b"")
    elif mode == "check":
        assert (res.verdict, res.frame) == (Verdict.BAD_ICV, LONG)  # delivered, but flagged
    else:
        assert (res.verdict, res.frame) == (Verdict.OK, LONG)  # not checked at all
    # Encrypted frames are always checked.
    secy_c = SecYConfig(validate=mode)
    tx_c, rx_c, _ = pair(secy_c)
    bad_c = bytearray(sealed(tx_c))
    bad_c[-1] ^= 0xFF
    assert rx_c.validate(bytes(bad_c)).verdict is Verdict.BAD_ICV
    assert rx_c.validate(bytes(bad_c)).frame == b""


# --- XPN ----------------------------------------------------------------------------------------

def test_recover_pn_rule() -> None:
    assert recover_pn(5, 3) == 5
    assert recover_pn(0xFFFFFFF0, 0x1_FFFF_FFF0) == 0x1_FFFF_FFF0
    assert recover_pn(2, 0x1_FFFF_FFF0) == 0x2_0000_0002  # wire PN below the low half: next block
    assert recover_pn(2, (1 << 64) - 5) is None  # would leave the 64-bit space


@pytest.mark.parametrize("window", [0, 3])
def test_xpn_across_2_32(window: int) -> None:
    secy = SecYConfig(replay_window=window)
    start = (1 << 32) - 3
    tx, rx, sa = pair(secy, cipher="gcm-aes-xpn-128", next_pn=start)
    frames = [sealed(tx) for _ in range(6)]
    wire = [int.from_bytes(f[16:20], "big") for f in frames]
    assert wire == [0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]
    for i, f in enumerate(frames):
        res = rx.validate(f)
        assert (res.verdict, res.pn) == (Verdict.OK, start + i)
    assert rx.next_pn_for(sa.sci, sa.an) == start + 6


def test_xpn_jump_over_boundary_with_low_lowest_pn() -> None:
    """Lowest acceptable PN just below 2^32, a small wire PN -> high half + 1."""
    _, _, sa = pair(cipher="gcm-aes-xpn-256")
    tx = MacsecTx(SecYConfig(), replace(sa, next_pn=(1 << 32) + 7))
    rx = MacsecRx(SecYConfig())
    rx.add_sa(replace(sa, next_pn=(1 << 32) - 2))
    res = rx.validate(sealed(tx))
    assert (res.verdict, res.pn) == (Verdict.OK, (1 << 32) + 7)


def test_xpn_recovery_out_of_space_and_wire_zero() -> None:
    _, _, sa = pair(cipher="gcm-aes-xpn-128")
    frame = sealed(MacsecTx(SecYConfig(), replace(sa, next_pn=1 << 32)))  # wire PN 0
    assert frame[16:20] == b"\x00\x00\x00\x00"
    rx = MacsecRx(SecYConfig())
    rx.add_sa(replace(sa, next_pn=(1 << 64) - 3))  # recovery would need high half 2^32
    assert rx.validate(frame).verdict is Verdict.BAD_HEADER
    assert rx.counters_for(sa.sci, sa.an).bad_header == 1
    # With XPN a wire PN of 0 is legal: lowest acceptable PN >= 1, so it means the next block.
    rx0 = MacsecRx(SecYConfig())
    rx0.add_sa(sa)
    res = rx0.validate(frame)
    assert (res.verdict, res.pn) == (Verdict.OK, 1 << 32)


# --- PN exhaustion ------------------------------------------------------------------------------

def test_soft_pn_event_at_threshold() -> None:
    secy = SecYConfig(pn_exhaustion_threshold=100)
    tx = MacsecTx(secy, sa_cfg(next_pn=98))
    sealed(tx)
    assert tx.next_pn == 99 and tx.poll_events() == []
    sealed(tx)
    assert tx.next_pn == 100
    assert tx.poll_events() == [ExpireEvent(SCI, "soft", "pn")]
    sealed(tx)
    assert tx.poll_events() == []  # once per SA


def test_non_xpn_exhausted_after_last_pn() -> None:
    tx = MacsecTx(SecYConfig(), sa_cfg(next_pn=(1 << 32) - 2))
    f1, f2 = sealed(tx), sealed(tx)
    assert f2[16:20] == b"\xff\xff\xff\xff"
    events = tx.poll_events()
    assert ExpireEvent(SCI, "hard", "pn") in events and ExpireEvent(SCI, "soft", "pn") in events
    assert tx.protect(LONG) == (Verdict.EXHAUSTED, b"")
    assert tx.protect(LONG) == (Verdict.EXHAUSTED, b"")
    assert tx.counters.exhausted == 2 and tx.counters.packets == 2
    assert tx.next_pn == 1 << 32
    assert tx.poll_events() == []
    rx = MacsecRx(SecYConfig())
    rx.add_sa(sa_cfg(next_pn=(1 << 32) - 2))
    assert [rx.validate(f).verdict for f in (f1, f2)] == [Verdict.OK, Verdict.OK]


def test_xpn_soft_threshold_and_exhaustion() -> None:
    secy = SecYConfig(pn_exhaustion_threshold=0xC0000000)
    tx = MacsecTx(secy, sa_cfg("gcm-aes-xpn-128", next_pn=(0xC0000000 << 32) - 1))
    sealed(tx)
    assert tx.poll_events() == [ExpireEvent(SCI, "soft", "pn")]
    tx_end = MacsecTx(secy, sa_cfg("gcm-aes-xpn-128", next_pn=(1 << 64) - 1))
    sealed(tx_end)
    assert ExpireEvent(SCI, "hard", "pn") in tx_end.poll_events()
    assert tx_end.protect(LONG) == (Verdict.EXHAUSTED, b"")


def test_batch_matches_single() -> None:
    tx1, rx1, _ = pair()
    tx2, rx2, _ = pair()
    frames = [LONG, SHORT, LONG[:5], SHORT + b"z" * 60]
    batch = tx1.protect_batch(frames)
    single = [tx2.protect(f) for f in frames]
    assert batch == single
    wires = [w for v, w in batch if v is Verdict.OK]
    assert rx1.validate_batch(wires) == [rx2.validate(w) for w in wires]
    assert all(r.verdict is Verdict.OK for r in rx1.validate_batch([]) + rx2.validate_batch([]))


# --- tshark as an independent SecTAG dissector ---------------------------------------------------

def _write_pcap(path: Path, frames: list[bytes]) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # LINKTYPE_ETHERNET
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", i, 0, len(f), len(f)) + f
    path.write_bytes(bytes(out))


def test_tshark_reads_our_sectags(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (make deps installs it)")
    cases = [
        (SecYConfig(), SHORT, 0),
        (SecYConfig(confidentiality=False), LONG, 1),
        (SecYConfig(include_sci=False, end_station=True), SHORT + b"q" * 50, 2),
        (SecYConfig(include_sci=False, confidentiality=False), SHORT, 3),
    ]
    frames = []
    for secy, frame, an in cases:
        tx = MacsecTx(secy, sa_cfg("gcm-aes-xpn-128", next_pn=(9 << 32) + 0x1234 + an, an=an))
        frames.append(sealed(tx, frame))
    pcap = tmp_path / "macsec.pcap"
    _write_pcap(pcap, frames)
    fields = ["macsec.TCI.ES", "macsec.TCI.SC", "macsec.TCI.E", "macsec.TCI.C", "macsec.AN", "macsec.SL",
              "macsec.PN", "macsec.SCI.system_identifier", "macsec.SCI.port_identifier", "macsec.ICV"]
    cmd = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    lines = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(lines) == len(cases)
    for line, (secy, frame, an), wire in zip(lines, cases, frames, strict=True):
        es, sc, e, c, t_an, sl, pn, sysid, port, icv = line.split("|")
        truthy = {"1", "True"}
        assert (es in truthy, sc in truthy) == (secy.end_station and not secy.include_sci, secy.include_sci)
        assert (e in truthy, c in truthy) == (secy.confidentiality, secy.confidentiality)
        assert int(t_an, 0) == an
        secure_len = len(frame) - 12
        assert int(sl, 0) == (secure_len if secure_len < 48 else 0)
        assert int(pn, 0) == 0x1234 + an  # the low half of the XPN PN
        if secy.include_sci:
            assert (sysid, int(port, 0)) == ("02:00:00:00:00:01", 5)
        if secy.confidentiality:  # tshark 4.0 splits off the ICV only for encrypted frames
            assert bytes.fromhex(icv.replace(":", "")) == wire[-16:]


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=2, max_size=200),
    st.sampled_from(["gcm-aes-128", "gcm-aes-256", "gcm-aes-xpn-128", "gcm-aes-xpn-256"]),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=(1 << 32) - 1),
)
def test_protect_validate_roundtrip(body: bytes, cipher: str, conf: bool, include_sci: bool, pn: int) -> None:
    secy = SecYConfig(confidentiality=conf, include_sci=include_sci)
    sa = sa_cfg(cipher, next_pn=pn, sci=SCI if include_sci else implicit_sci(SA_MAC))
    frame = DA + SA_MAC + body
    verdict, wire = MacsecTx(secy, sa).protect(frame)
    assert verdict is Verdict.OK
    assert len(wire) == len(frame) + 8 + (8 if include_sci else 0) + 16
    hl = 12 + 8 + (8 if include_sci else 0)
    if not conf:
        assert wire[hl : hl + len(body)] == body  # integrity only: data travels in clear
    elif len(body) >= 8:
        assert wire[hl : hl + len(body)] != body
    rx = MacsecRx(secy)
    rx.add_sa(sa)
    res = rx.validate(wire)
    assert (res.verdict, res.frame, res.pn) == (Verdict.OK, frame, pn)
