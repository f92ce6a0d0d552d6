"""MKPDU codec: round trips, exact layout, malformed input, fuzzing, and tshark as a second opinion."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecemu.macsec.mka import kdf
from ipsecemu.macsec.mka.mkpdu import (
    CIPHER_SUITES,
    PAE_GROUP_ADDR,
    BasicParameterSet,
    DistributedSak,
    Mkpdu,
    MkpduError,
    PeerEntry,
    SakUse,
    UnknownSet,
    XpnParameterSet,
    encode_frame,
    parse_frame,
    verify,
)

ICK = kdf.derive_ick(bytes(range(16)), bytes.fromhex("a0a1a2a3a4"))
SRC = bytes.fromhex("020000000001")
BASIC = BasicParameterSet(
    sci=SRC + b"\x00\x01", mi=bytes(range(12)), mn=7, ckn=bytes.fromhex("a0a1a2a3a4"), key_server=True
)


def full_mkpdu(suite: int | None = CIPHER_SUITES["gcm-aes-xpn-256"], wrapped_len: int = 40) -> Mkpdu:
    return Mkpdu(
        basic=BASIC,
        live_peers=(PeerEntry(b"\x11" * 12, 3), PeerEntry(b"\x55" * 12, 0xFFFFFFFF)),
        potential_peers=(PeerEntry(b"\x22" * 12, 4),),
        sak_use=SakUse(
            latest_an=1,
            latest_tx=True,
            latest_rx=True,
            old_an=2,
            old_rx=True,
            latest_ks_mi=b"\x33" * 12,
            latest_kn=5,
            latest_lowest_pn=9,
            old_ks_mi=b"\x44" * 12,
            old_kn=4,
            old_lowest_pn=2,
        ),
        distributed_sak=DistributedSak(
            an=1, confidentiality_offset=1, kn=5, wrapped=bytes(range(wrapped_len)), cipher_suite=suite
        ),
        xpn=XpnParameterSet(0, 0x01020304, 0x05060708),
        key_server_ssci=1,
    )


def test_round_trip_all_parameter_sets() -> None:
    m = full_mkpdu()
    frame = encode_frame(m, ICK, SRC)
    p = parse_frame(frame)
    assert p.mkpdu == m
    assert p.dst == PAE_GROUP_ADDR and p.src == SRC
    assert verify(p, ICK)
    assert not verify(p, bytes(16))


def test_round_trip_with_icv_indicator_and_default_suite() -> None:
    m = full_mkpdu(suite=None, wrapped_len=24)
    frame = encode_frame(m, ICK, SRC, icv_indicator=True)
    p = parse_frame(frame)
    assert p.mkpdu == m and verify(p, ICK)
    assert frame[-20:-16] == bytes([255, 0, 0, 16])


def test_exact_layout_of_a_small_mkpdu() -> None:
    m = Mkpdu(basic=BASIC, sak_use=SakUse(keys=False))
    frame = encode_frame(m, ICK, SRC)
    # Ethernet: group address, source, EtherType 888e
    assert frame[:14] == PAE_GROUP_ADDR + SRC + b"\x88\x8e"
    # EAPOL: version 3, type 5 (MKA), body = basic (4+28+5+3 pad) + SAK use header (4) + ICV (16)
    assert frame[14:18] == bytes([3, 5]) + (40 + 4 + 16).to_bytes(2, "big")
    # Basic set: version 3, priority 0x10, KS=1 desired=1 capability=3 -> 0xF0 | len high 0; length 33
    assert frame[18:22] == bytes([3, 0x10, 0xF0, 33])
    assert frame[22:30] == BASIC.sci and frame[30:42] == BASIC.mi
    assert frame[42:46] == (7).to_bytes(4, "big")
    assert frame[46:50] == bytes.fromhex("0080c201")
    assert frame[50:58] == BASIC.ckn + bytes(3)
    assert frame[58:62] == bytes([3, 0, 0, 0])  # empty SAK Use
    assert frame[62:] == kdf.aes_cmac(ICK, frame[:62])
    assert len(frame) == 78


def test_trailing_ethernet_padding_is_ignored() -> None:
    frame = encode_frame(full_mkpdu(), ICK, SRC)
    p = parse_frame(frame + bytes(20))
    assert p.mkpdu == full_mkpdu() and verify(p, ICK)


def test_unknown_parameter_sets_are_kept() -> None:
    m = Mkpdu(basic=BASIC, unknown=(UnknownSet(6, 0, b"kmd!"),))
    assert parse_frame(encode_frame(m, ICK, SRC)).mkpdu == m


def _patch(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value) :]


GOOD = encode_frame(full_mkpdu(), ICK, SRC)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "too short"),
        (GOOD[:17], "too short"),
        (_patch(GOOD, 12, b"\x88\xe5"), "EtherType"),
        (_patch(GOOD, 15, b"\x00"), "packet type"),
        (_patch(GOOD, 14, b"\x00"), "version 0"),
        (_patch(GOOD, 16, b"\xff\xff"), "runs past"),
        (GOOD[:-1], "runs past"),
        (_patch(GOOD, 16, b"\x00\x10"), "too short for an MKPDU"),
        (_patch(GOOD, 18, b"\x00"), "MKA version 0"),
        (_patch(GOOD, 20, b"\xf0\x1c"), "CKN must be"),  # body length 28: empty CKN
        (_patch(GOOD, 20, b"\xf0\x3d"), "CKN must be"),  # 61: CKN of 33
        (_patch(GOOD, 58, b"\x01\x01\x00\x11"), "not a multiple of 16"),  # live list of 17
        (_patch(GOOD, 58, b"\x01\x01\x0f\xff"), "runs past"),
        (_patch(GOOD, 58, b"\x03"), "SAK use"),  # live list (32 octets) retyped as SAK Use
    ],
    ids=[
        "empty",
        "no-eapol",
        "ethertype",
        "eapol-type",
        "eapol-version",
        "body-too-long",
        "truncated",
        "body-too-short",
        "mka-version",
        "empty-ckn",
        "long-ckn",
        "peer-list-len",
        "set-overrun",
        "sak-use-len",
    ],
)
def test_malformed_frames_raise_mkpdu_error(frame: bytes, match: str) -> None:
    with pytest.raises(MkpduError, match=match):
        parse_frame(frame)


def test_bad_lengths_of_specific_sets() -> None:
    def one(ptype: int, body: bytes) -> bytes:
        return encode_frame(Mkpdu(basic=BASIC, unknown=(UnknownSet(ptype, 0, body),)), ICK, SRC)

    with pytest.raises(MkpduError, match="SAK use"):
        parse_frame(one(3, bytes(12)))
    with pytest.raises(MkpduError, match="distributed SAK"):
        parse_frame(one(4, bytes(20)))
    with pytest.raises(MkpduError, match="XPN"):
        parse_frame(one(8, bytes(4)))
    with pytest.raises(MkpduError, match="ICV indicator"):
        parse_frame(one(255, bytes(4)))
    twice = Mkpdu(basic=BASIC, unknown=(UnknownSet(6, 0, b"a"), UnknownSet(6, 0, b"b")))
    with pytest.raises(MkpduError, match="appears twice"):
        parse_frame(encode_frame(twice, ICK, SRC))


def test_encode_rejects_bad_fields() -> None:
    with pytest.raises(MkpduError):
        encode_frame(Mkpdu(basic=replace(BASIC, sci=b"short")), ICK, SRC)
    with pytest.raises(MkpduError):
        encode_frame(Mkpdu(basic=BASIC), ICK, b"\x00")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_mkpdu_error(data: bytes) -> None:
    try:
        parse_frame(data)
    except MkpduError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(GOOD) - 1),
    st.integers(min_value=0, max_value=255),
    st.integers(0, len(GOOD)),
)
def test_fuzz_mutated_valid_frames(pos: int, value: int, cut: int) -> None:
    frame = _patch(GOOD, pos, bytes([value]))[:cut] if cut else _patch(GOOD, pos, bytes([value]))
    try:
        p = parse_frame(frame)
    except MkpduError:
        return
    # Any change inside the signed part or the ICV must break the ICV.
    if frame != GOOD and GOOD[pos] != value and pos < 14 + 4 + int.from_bytes(GOOD[16:18], "big"):
        assert not verify(p, ICK)


# --- tshark (Wireshark 4.0 EAPOL-MKA dissector) as an independent decoder ---------------------


def _tshark_json(tmp_path: Path, frames: list[bytes]) -> list[dict]:
    from scapy.all import Ether, wrpcap  # scapy builds the pcap; the bytes are ours

    pcap = tmp_path / "mka.pcap"
    wrpcap(str(pcap), [Ether(f) for f in frames])
    verbose = subprocess.run(["tshark", "-r", str(pcap), "-V"], capture_output=True, text=True, timeout=60)
    assert verbose.returncode == 0, verbose.stderr
    assert "Malformed" not in verbose.stdout and "Expert Info" not in verbose.stdout
    assert verbose.stdout.count("MACsec Key Agreement") == len(frames)
    flagged = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "_ws.malformed || _ws.expert || mka.unknown_set"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flagged.stdout.strip() == ""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "json", "--no-duplicate-keys"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [pkt["_source"]["layers"] for pkt in json.loads(out.stdout)]


def _find(tree: object, key: str) -> list[str]:
    found: list[str] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                found.extend(v if isinstance(v, list) else [v])
            found.extend(_find(v, key))
    elif isinstance(tree, list):
        for v in tree:
            found.extend(_find(v, key))
    return found


def _hex(s: str) -> str:
    return s.replace(":", "").lower()


def test_tshark_dissects_our_mkpdus(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    m1 = full_mkpdu()
    m2 = Mkpdu(basic=replace(BASIC, key_server=False, mn=8), sak_use=SakUse(keys=False))
    m3 = full_mkpdu(suite=None, wrapped_len=24)
    frames = [
        encode_frame(m1, ICK, SRC),
        encode_frame(m2, ICK, SRC),
        encode_frame(m3, ICK, SRC, icv_indicator=True),
    ]
    layers = _tshark_json(tmp_path, frames)
    mka = [pkt["mka"] for pkt in layers]
    assert [pkt["eapol"]["eapol.type"] for pkt in layers] == ["5", "5", "5"]
    assert [pkt["eapol"]["eapol.version"] for pkt in layers] == ["3", "3", "3"]
    a = mka[0]
    assert _find(a, "mka.version_id") == ["3"]
    assert _find(a, "mka.ks_prio") == ["16"]
    assert _find(a, "mka.key_server") == ["1"]
    assert _hex(_find(a, "mka.sci")[0]) == BASIC.sci.hex()
    assert _hex(_find(a, "mka.actor_mi")[0]) == BASIC.mi.hex()
    assert _hex(_find(a, "mka.actor_mn")[0]) == "00000007"
    assert _hex(_find(a, "mka.cak_name")[0]) == BASIC.ckn.hex()
    assert [_hex(x) for x in _find(a, "mka.peer_mi")] == ["11" * 12, "55" * 12, "22" * 12]
    assert _find(a, "mka.key_server_ssci") == ["0x01"]
    assert _find(a, "mka.latest_key_an") == ["1"] and _find(a, "mka.old_key_an") == ["2"]
    assert _find(a, "mka.latest_key_tx") == ["1"] and _find(a, "mka.old_key_tx") == ["0"]
    assert _hex(_find(a, "mka.latest_key_number")[0]) == "00000005"
    assert _find(a, "mka.distributed_an") == ["1"] and _find(a, "mka.confidentiality_offset") == ["1"]
    assert _find(a, "mka.macsec_cipher_suite") == [str(CIPHER_SUITES["gcm-aes-xpn-256"])]
    assert _hex(_find(a, "mka.aes_key_wrap_sak")[0]) == bytes(range(40)).hex()
    assert _hex(_find(a, "mka.icv")[0]) == frames[0][-16:].hex()
    assert _find(a, "mka.xpn_set")
    assert _find(mka[1], "mka.key_server") == ["0"] and _find(mka[1], "mka.macsec_sak_use_set")
    assert _hex(_find(mka[2], "mka.aes_key_wrap_sak")[0]) == bytes(range(24)).hex()
    assert _find(mka[2], "mka.icv_indicator")
