"""The capture decryptor never raises on hostile frames: truncated, bit-flipped or random input
gets a per-frame verdict (failed / passed through), and the transforms never hit an internal
error ("data-plane error" would mean a backend bug)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig
from ipsecemu.dataplane import backend
from ipsecemu.esp import framing
from ipsecemu.pcap.decrypt import CaptureDecryptor
from ipsecemu.pcap.uat import esp_row

BE = backend("auto")
GCM = EspSaConfig(spi=0x1111, encr="aes-gcm-16", enc_key=bytes(20))
CBC = EspSaConfig(spi=0x2222, encr="aes-cbc", enc_key=bytes(16), integ="hmac-sha1-96", integ_key=bytes(20))
MACSEC = MacsecSaConfig("gcm-aes-xpn-128", bytes(16), bytes.fromhex("0200000000010001"), 1, ssci=5, salt=bytes(12))
ROWS = [
    esp_row("192.0.2.1", "192.0.2.2", GCM.spi, GCM.encr, GCM.enc_key),
    esp_row("192.0.2.1", "192.0.2.2", CBC.spi, CBC.encr, CBC.enc_key, CBC.integ, CBC.integ_key),
    esp_row("192.0.2.1", "192.0.2.2", 0x3333, "3des-cbc", bytes(24), None, verify_icv=False, icv_len=12),
]
INNER = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"z" * 40))


def _seeds() -> list[bytes]:
    seeds = []
    for cfg, udp in ((GCM, None), (CBC, (4500, 4500))):
        _, esp = BE.EspOutbound(cfg).encap(INNER, 4)
        seeds.append(raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)
                         / Raw(framing.frame_tunnel(esp, "192.0.2.1", "192.0.2.2", udp_ports=udp))))
    plain = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(INNER))
    seeds.append(BE.MacsecTx(SecYConfig(), MACSEC).protect(plain)[1])
    seeds.append(BE.MacsecTx(SecYConfig(include_sci=False), MACSEC).protect(plain)[1])
    # 3DES without ICV check: 8-byte blocks, 12-byte ICV
    body = bytes(8) + bytes(range(16)) + bytes(12)
    seeds.append(raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)
                     / Raw(framing.frame_tunnel(b"\x00\x00\x33\x33\x00\x00\x00\x01" + body, "192.0.2.1", "192.0.2.2"))))
    return seeds


SEEDS = _seeds()


def _decryptor() -> CaptureDecryptor:
    return CaptureDecryptor(ROWS, [MACSEC])


def _check(dec: CaptureDecryptor, linktype: int, frame: bytes) -> None:
    before = (dec.summary.failed, dec.summary.dummy)
    out = dec.process(dec.summary.frames + 1, linktype, frame)
    assert out is None or isinstance(out, bytes)
    if out is None:
        assert (dec.summary.failed, dec.summary.dummy) != before
    assert not any("data-plane error" in f.reason for f in dec.summary.failures), dec.summary.failures


def test_seeds_decrypt() -> None:
    dec = _decryptor()
    for frame in SEEDS[:4]:
        out = dec.process(1, 1, frame)
        assert out is not None and INNER in out
    assert dec.summary.failed == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 199),
       st.integers(1, 255)), max_size=3), tail=st.binary(max_size=8))
def test_mutated_frames_get_a_verdict(seed: bytes, cut: int, flips: list[tuple[int, int]], tail: bytes) -> None:
    frame = bytearray(seed[: max(0, len(seed) - cut)] if cut < len(seed) else seed[:cut % 20])
    for pos, mask in flips:
        if pos < len(frame):
            frame[pos] ^= mask
    _check(_decryptor(), 1, bytes(frame) + tail)


@settings(max_examples=200, deadline=None)
@given(linktype=st.sampled_from([0, 1, 101, 108, 113, 228, 229, 276, 147]), data=st.binary(max_size=120))
def test_random_bytes_any_linktype(linktype: int, data: bytes) -> None:
    _check(_decryptor(), linktype, data)
