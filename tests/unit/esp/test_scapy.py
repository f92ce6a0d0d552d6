"""scapy's SecurityAssociation as an independent ESP implementation: scapy encrypts -> the
reference decrypts, and the reference encrypts (framed by ipsecemu.esp.framing) -> scapy
decrypts, in tunnel and transport mode, IPv4/IPv6 outer, with ESN and NAT-T (UDP 4500)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.packet import Raw

from ipsecemu.base.algorithms import ESP_ENCR, ESP_INTEG
from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.esp import framing
from ipsecemu.esp.reference import EspInbound, EspOutbound

SPI = 0x0BADCAFE


@dataclass(frozen=True)
class Suite:
    encr: str
    keylen: int
    integ: str | None
    scapy_crypt: str
    scapy_auth: str | None

    def __str__(self) -> str:
        return f"{self.encr}-{self.keylen * 8}-{self.integ or 'aead'}"


SUITES = [
    Suite("aes-gcm-16", 16, None, "AES-GCM", None),
    Suite("aes-gcm-16", 32, None, "AES-GCM", None),
    Suite("aes-gcm-16", 24, None, "AES-GCM", None),
    # No aes-gcm-8/-12 here: scapy 2.8's AEAD path always appends the full 16-byte tag and
    # ignores crypt_icv_size, so it cannot speak truncated GCM ICVs; test_esp_reference checks
    # those against cryptography's AESGCM directly.
    Suite("aes-cbc", 16, "hmac-sha256-128", "AES-CBC", "SHA2-256-128"),
    Suite("aes-cbc", 32, "hmac-sha1-96", "AES-CBC", "HMAC-SHA1-96"),
    Suite("aes-cbc", 24, "hmac-sha512-256", "AES-CBC", "SHA2-512-256"),
    Suite("3des-cbc", 24, "hmac-sha384-192", "3DES", "SHA2-384-192"),
    Suite("null", 0, "hmac-md5-96", "NULL", "HMAC-MD5-96"),
    Suite("chacha20-poly1305", 32, None, "CHACHA20-POLY1305", None),
]
MAIN = [s for s in SUITES if str(s) in ("aes-gcm-16-128-aead", "aes-cbc-128-hmac-sha256-128",
                                        "aes-cbc-256-hmac-sha1-96")]

OUTER4 = ("192.0.2.1", "198.51.100.1")
OUTER6 = ("2001:db8:a::1", "2001:db8:b::1")


def keys(s: Suite) -> tuple[bytes, bytes]:
    salt = ESP_ENCR[s.encr][1]
    enc = bytes((0x30 + i) & 0xFF for i in range(s.keylen + salt))
    integ = bytes((0x90 + i) & 0xFF for i in range(ESP_INTEG[s.integ][0])) if s.integ else b""
    return enc, integ


def ours(s: Suite, *, esn: bool = False, mode: str = "tunnel") -> EspSaConfig:
    enc, integ = keys(s)
    return EspSaConfig(spi=SPI, encr=s.encr, enc_key=enc, integ=s.integ, integ_key=integ, esn=esn, mode=mode)


def theirs(s: Suite, *, tunnel: tuple[str, str] | None, nat_t: bool, esn_hi: int | None, v6: bool = False,
           seq: int = 1) -> SecurityAssociation:
    enc, integ = keys(s)
    header = None
    if tunnel is not None:
        header = IPv6(src=tunnel[0], dst=tunnel[1]) if v6 else IP(src=tunnel[0], dst=tunnel[1])
    return SecurityAssociation(
        ESP, spi=SPI, seq_num=seq, crypt_algo=s.scapy_crypt, crypt_key=enc or None,
        auth_algo=s.scapy_auth, auth_key=integ or None,
        tunnel_header=header, nat_t_header=UDP(sport=4500, dport=4500) if nat_t else None,
        esn_en=esn_hi is not None, esn=esn_hi or 0)


def inner4() -> bytes:
    return bytes(IP(src="10.1.0.1", dst="10.2.0.1", id=7) / ICMP(id=1, seq=1) / Raw(b"ping " * 21))


def inner6() -> bytes:
    return bytes(IPv6(src="fd00:1::1", dst="fd00:2::1") / UDP(sport=1234, dport=5678) / Raw(b"six" * 33))


def _iv(s: Suite, seq: int) -> bytes | None:
    """The IV scapy should use so both sides produce identical bytes."""
    iv_len = ESP_ENCR[s.encr][2]
    if s.encr in ("aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "chacha20-poly1305"):
        return seq.to_bytes(8, "big")  # our default AEAD IV
    return bytes(range(iv_len)) if iv_len else None


CASES = [
    # (outer v6?, inner v6?, nat_t, esn)
    (False, False, False, False),
    (False, True, True, False),
    (True, False, False, True),
    (True, True, True, True),
]


@pytest.mark.parametrize("outer6,in6,nat_t,esn", CASES)
@pytest.mark.parametrize("s", SUITES, ids=str)
def test_tunnel_scapy_encrypts_we_decrypt(s: Suite, outer6: bool, in6: bool, nat_t: bool, esn: bool) -> None:
    seq_hi = 0x1234 if esn else None
    seq_lo = 77
    full = ((seq_hi or 0) << 32) | seq_lo
    outer = OUTER6 if outer6 else OUTER4
    inner = inner6() if in6 else inner4()
    sa = theirs(s, tunnel=outer, nat_t=nat_t, esn_hi=seq_hi, v6=outer6)
    ip_cls = IPv6 if in6 else IP
    enc = bytes(sa.encrypt(ip_cls(inner), seq_num=seq_lo, iv=_iv(s, full)))
    parsed = framing.parse_outer(enc)
    assert parsed.kind == "esp" and parsed.udp_ports == ((4500, 4500) if nat_t else None)
    inb = EspInbound(ours(s, esn=esn), replay_top=full - 1)
    res = inb.decap(parsed.payload)
    assert res.verdict == Verdict.OK, res
    assert res.payload == inner and res.next_header == (41 if in6 else 4) and res.seq == full
    # same IV + same sequence number -> our encap is byte-identical to scapy's
    out = EspOutbound(ours(s, esn=esn), initial_seq=full)
    _v, esp = out.encap(inner, framing.inner_next_header(inner), iv=_iv(s, full))
    assert esp == parsed.payload


@pytest.mark.parametrize("outer6,in6,nat_t,esn", CASES)
@pytest.mark.parametrize("s", SUITES, ids=str)
def test_tunnel_we_encrypt_scapy_decrypts(s: Suite, outer6: bool, in6: bool, nat_t: bool, esn: bool) -> None:
    seq_hi = 0x10 if esn else None
    full = ((seq_hi or 0) << 32) | 0xFFFFFFF0
    outer = OUTER6 if outer6 else OUTER4
    inner = inner6() if in6 else inner4()
    out = EspOutbound(ours(s, esn=esn), initial_seq=full)
    verdict, esp = out.encap(inner, framing.inner_next_header(inner))  # default (random CBC) IVs
    assert verdict == Verdict.OK
    wire = framing.frame_tunnel(esp, *outer, udp_ports=(4500, 4500) if nat_t else None)
    sa = theirs(s, tunnel=outer, nat_t=nat_t, esn_hi=seq_hi, v6=outer6)
    dec = sa.decrypt((IPv6 if outer6 else IP)(wire))
    assert bytes(dec) == inner


def _transport_packet(v6: bool) -> bytes:
    if v6:
        return bytes(IPv6(src=OUTER6[0], dst=OUTER6[1], hlim=64) / UDP(sport=7, dport=9) / Raw(b"transport6" * 9))
    return bytes(IP(src=OUTER4[0], dst=OUTER4[1], id=99, ttl=64) / ICMP(id=5, seq=6) / Raw(b"transport4" * 9))


@pytest.mark.parametrize("v6,nat_t,esn", [(False, False, False), (False, True, True), (True, False, True)])
@pytest.mark.parametrize("s", MAIN, ids=str)
def test_transport_both_directions(s: Suite, v6: bool, nat_t: bool, esn: bool) -> None:
    seq_hi = 3 if esn else None
    full = ((seq_hi or 0) << 32) | 5
    orig = _transport_packet(v6)
    ip_cls = IPv6 if v6 else IP
    # scapy -> us
    sa = theirs(s, tunnel=None, nat_t=nat_t, esn_hi=seq_hi, v6=v6)
    enc = bytes(sa.encrypt(ip_cls(orig), seq_num=5, iv=_iv(s, full)))
    parsed = framing.parse_outer(enc)
    assert parsed.kind == "esp"
    res = EspInbound(ours(s, esn=esn, mode="transport"), replay_top=full - 1).decap(parsed.payload)
    assert res.verdict == Verdict.OK
    assert framing.restore_transport(parsed.header, res.next_header, res.payload) == orig
    # us -> scapy
    header, proto, data = framing.split_transport(orig)
    out = EspOutbound(ours(s, esn=esn, mode="transport"), initial_seq=full)
    _v, esp = out.encap(data, proto)
    wire = framing.join_transport(header, esp, udp_ports=(4500, 4500) if nat_t else None)
    dec = sa.decrypt(ip_cls(wire))
    assert bytes(dec) == orig


@pytest.mark.parametrize("s", MAIN, ids=str)
def test_scapy_rejects_our_tampered_packet(s: Suite) -> None:
    """The other direction of the ICV: a bit flipped in our output is caught by scapy too."""
    _v, esp = EspOutbound(ours(s)).encap(inner4(), 4)
    bad = bytearray(framing.frame_tunnel(esp, *OUTER4))
    bad[-1] ^= 0x80
    sa = theirs(s, tunnel=OUTER4, nat_t=False, esn_hi=None)
    with pytest.raises(IPSecIntegrityError):
        sa.decrypt(IP(bytes(bad)))


def test_scapy_sequence_of_packets_and_replay() -> None:
    s = MAIN[0]
    sa = theirs(s, tunnel=OUTER4, nat_t=True, esn_hi=None)
    inb = EspInbound(ours(s))
    pkts = [framing.parse_outer(bytes(sa.encrypt(IP(inner4())))).payload for _ in range(5)]
    assert [inb.decap(p).seq for p in pkts] == [1, 2, 3, 4, 5]
    assert inb.decap(pkts[2]).verdict == Verdict.REPLAY
    assert inb.counters.packets == 5 and inb.counters.replay == 1
