"""3DES-CBC and transport-mode ESP on the C path, cross-checked with scapy's ESP (an independent
implementation) in both directions and with the reference path (byte-identical output, each
opens the other's packets).  No published 3DES-CBC ESP vectors exist (RFC 2451 has none), so
scapy is the outside oracle here."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

from ipsecemu.base.algorithms import ESP_ENCR, ESP_INTEG
from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.esp import framing
from ipsecemu.esp import reference as ref
from ipsecemu.esp import transport as ref_transport

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
native_esp = pytest.importorskip("ipsecemu.dataplane.native.esp")

SPI = 0x0C0FFEE1
A4, B4 = "10.2.27.10", "10.0.1.4"
A6, B6 = "fd00:27::10", "fd00:1::4"


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
    Suite("3des-cbc", 24, "hmac-sha1-96", "3DES", "HMAC-SHA1-96"),
    Suite("3des-cbc", 24, "hmac-sha256-128", "3DES", "SHA2-256-128"),
    Suite("3des-cbc", 24, "hmac-sha512-256", "3DES", "SHA2-512-256"),
    Suite("aes-gcm-16", 16, None, "AES-GCM", None),
    Suite("aes-cbc", 32, "hmac-sha1-96", "AES-CBC", "HMAC-SHA1-96"),
]


def keys(s: Suite) -> tuple[bytes, bytes]:
    salt = ESP_ENCR[s.encr][1]
    enc = bytes((0x51 + 7 * i) & 0xFF for i in range(s.keylen + salt))
    integ = bytes((0xA0 + i) & 0xFF for i in range(ESP_INTEG[s.integ][0])) if s.integ else b""
    return enc, integ


def cfg(s: Suite, *, esn: bool = False, mode: str = "transport") -> EspSaConfig:
    enc, integ = keys(s)
    return EspSaConfig(spi=SPI, encr=s.encr, enc_key=enc, integ=s.integ, integ_key=integ, esn=esn, mode=mode)


def scapy_sa(s: Suite, *, tunnel: tuple[str, str] | None = None, nat_t: bool = False, esn_hi: int | None = None,
             v6: bool = False) -> SecurityAssociation:
    enc, integ = keys(s)
    header = None if tunnel is None else (IPv6 if v6 else IP)(src=tunnel[0], dst=tunnel[1])
    return SecurityAssociation(ESP, spi=SPI, crypt_algo=s.scapy_crypt, crypt_key=enc, auth_algo=s.scapy_auth,
                               auth_key=integ or None, tunnel_header=header,
                               nat_t_header=UDP(sport=4500, dport=4500) if nat_t else None,
                               esn_en=esn_hi is not None, esn=esn_hi or 0)


def iv_for(s: Suite, seq: int) -> bytes:
    if s.encr.startswith("aes-gcm"):
        return seq.to_bytes(8, "big")
    return bytes(range(0x40, 0x40 + ESP_ENCR[s.encr][2]))


def tcp8080(v6: bool, *, reply: bool = False, n: int = 300) -> bytes:
    """An HTTP request to port 8080 (or the answer from it) with valid checksums."""
    l4 = (TCP(sport=8080, dport=40000, flags="PA", seq=9, ack=7) / Raw(b"HTTP/1.0 200 OK\r\n" + b"x" * n) if reply
          else TCP(sport=40000, dport=8080, flags="PA", seq=7, ack=9) / Raw(b"GET / HTTP/1.0\r\n" + b"y" * n))
    src, dst = (B6, A6) if v6 and reply else (A6, B6) if v6 else (B4, A4) if reply else (A4, B4)
    ip = IPv6(src=src, dst=dst, hlim=63) if v6 else IP(src=src, dst=dst, ttl=63, id=4242, flags="DF")
    return bytes(ip / l4)


def c_encap(s: Suite, pkt: bytes, *, esn: bool = False, seq: int = 1, iv: bytes | None = None) -> bytes:
    out = native.EspOutbound(cfg(s, esn=esn), initial_seq=seq)
    [(v, wire)] = out.encap_transport_batch([pkt], ivs=None if iv is None else [iv])
    assert v == Verdict.OK
    return bytes(wire)


def c_decap(s: Suite, wire: bytes, *, esn: bool = False, top: int = 0) -> tuple[Verdict, bytes, int]:
    t = native.EspInboundTable()
    t.add(cfg(s, esn=esn), replay_top=top)
    [res] = t.decap_transport_batch([wire])
    return res.verdict, res.payload, res.next_header


def l4_checksum_ok(pkt: bytes) -> bool:
    """scapy recomputes the IP and TCP/UDP checksums; equal to the stored ones <=> valid."""
    p = (IPv6 if pkt[0] >> 4 == 6 else IP)(pkt)
    l4 = p[TCP] if TCP in p else p[UDP]
    stored = l4.chksum
    del l4.chksum
    fresh = (IPv6 if pkt[0] >> 4 == 6 else IP)(bytes(p))
    return stored == (fresh[TCP] if TCP in fresh else fresh[UDP]).chksum


# ---------------------------------------------------------------- 3DES on the C path
def test_3des_is_on_the_c_path() -> None:
    assert native_esp.native_esp_supported(cfg(SUITES[0]))
    assert native.EspOutbound(cfg(SUITES[0]))._sa is not None


@pytest.mark.parametrize("s", [x for x in SUITES if x.encr == "3des-cbc"], ids=str)
@pytest.mark.parametrize("nat_t", [False, True])
def test_3des_tunnel_c_and_scapy_both_ways(s: Suite, nat_t: bool) -> None:
    inner = bytes(IP(src="10.2.27.10", dst="10.0.1.4") / ICMP(id=3, seq=4) / Raw(b"3des" * 40))
    outer = ("192.0.2.1", "198.51.100.1")
    sa = scapy_sa(s, tunnel=outer, nat_t=nat_t)
    # scapy -> C: same IV and seq give byte-identical ESP, and C opens scapy's packet
    enc = bytes(sa.encrypt(IP(inner), seq_num=11, iv=iv_for(s, 11)))
    esp = framing.parse_outer(enc).payload
    _v, mine = native.EspOutbound(cfg(s, mode="tunnel"), initial_seq=11).encap(inner, 4, iv=iv_for(s, 11))
    assert mine == esp
    t = native.EspInboundTable()
    t.add(cfg(s, mode="tunnel"), replay_top=10)
    res = t.decap(esp)
    assert (res.verdict, res.payload, res.next_header, res.seq) == (Verdict.OK, inner, 4, 11)
    # C (random IV) -> scapy
    _v, esp2 = native.EspOutbound(cfg(s, mode="tunnel")).encap(inner, 4)
    wire = framing.frame_tunnel(esp2, *outer, udp_ports=(4500, 4500) if nat_t else None)
    assert bytes(sa.decrypt(IP(wire))) == inner


# ---------------------------------------------------------------- transport mode vs scapy
CASES = [(False, False, False), (False, True, False), (True, False, True), (True, True, True)]  # v6, nat_t, esn


@pytest.mark.parametrize("v6,nat_t,esn", CASES)
@pytest.mark.parametrize("s", SUITES, ids=str)
def test_transport_c_encrypts_scapy_decrypts(s: Suite, v6: bool, nat_t: bool, esn: bool) -> None:
    pkt = tcp8080(v6)
    seq = (5 << 32 | 3) if esn else 3
    wire = c_encap(s, pkt, esn=esn, seq=seq)
    ip = (IPv6 if v6 else IP)(wire)
    # RFC 4303 3.1.1: the original header, protocol 50, ESP right after it, lengths/checksum right
    assert (ip.nh if v6 else ip.proto) == 50
    assert (ip.src, ip.dst) == ((A6, B6) if v6 else (A4, B4))
    if v6:
        assert ip.plen == len(wire) - 40 and ip.hlim == 63
    else:
        assert ip.len == len(wire) and ip.id == 4242 and ip.ttl == 63
        chk = ip.chksum
        del ip.chksum
        assert IP(bytes(ip)).chksum == chk
    assert int.from_bytes(wire[(40 if v6 else 20):][:4], "big") == SPI
    if nat_t:  # the wire form on a NAT-T socket: the kernel adds UDP; scapy wants it in the packet
        body = wire[40 if v6 else 20:]
        wire = framing.join_transport(wire[:40 if v6 else 20], body, udp_ports=(4500, 4500))
    sa = scapy_sa(s, nat_t=nat_t, esn_hi=5 if esn else None, v6=v6)
    esp_layer = (IPv6 if v6 else IP)(wire)
    dec = sa.decrypt(esp_layer)
    assert bytes(dec) == pkt
    # the ESP trailer's next header is TCP (6), not 4 (IP-in-IP as in tunnel mode)
    clear = native.EspInboundTable()
    clear.add(cfg(s, esn=esn), replay_top=seq - 1)
    [res] = clear.decap_transport_batch([wire])
    assert res.verdict == Verdict.OK and res.next_header == 6 and res.payload == pkt


@pytest.mark.parametrize("v6,nat_t,esn", CASES)
@pytest.mark.parametrize("s", SUITES, ids=str)
def test_transport_scapy_encrypts_c_decrypts(s: Suite, v6: bool, nat_t: bool, esn: bool) -> None:
    pkt = tcp8080(v6, reply=True)
    seq_lo = 77
    full = (5 << 32 | seq_lo) if esn else seq_lo
    sa = scapy_sa(s, nat_t=nat_t, esn_hi=5 if esn else None, v6=v6)
    wire = bytes(sa.encrypt((IPv6 if v6 else IP)(pkt), seq_num=seq_lo, iv=iv_for(s, full)))
    verdict, orig, nh = c_decap(s, wire, esn=esn, top=full - 1)
    assert (verdict, nh) == (Verdict.OK, 6)
    assert orig == pkt
    assert l4_checksum_ok(orig)
    # byte-identical to what C produces from the same packet, IV and sequence number
    mine = c_encap(s, pkt, esn=esn, seq=full, iv=iv_for(s, full))
    hl = 40 if v6 else 20
    assert mine[hl:] == wire[hl + (8 if nat_t else 0):]


@pytest.mark.parametrize("s", SUITES[:1] + SUITES[3:4], ids=str)
def test_transport_nat_checksum_recomputed(s: Suite) -> None:
    """RFC 3948 3.1.3: the sender (behind a NAT, 192.168.0.5) summed its private address; the
    packet arrives from the NAT's public address.  After decap the TCP checksum must be valid
    for the addresses in the restored header."""
    private = bytes(IP(src="192.168.0.5", dst=A4, ttl=60) / TCP(sport=41000, dport=8080, flags="S"))
    sa = scapy_sa(s, nat_t=True)
    wire = bytearray(bytes(sa.encrypt(IP(private), seq_num=1, iv=iv_for(s, 1))))
    wire[12:16] = bytes([203, 0, 113, 9])  # the NAT rewrites the source (and fixes the IP checksum)
    wire[10:12] = b"\0\0"
    wire[10:12] = framing.ip_checksum(bytes(wire[:20])).to_bytes(2, "big")
    verdict, orig, nh = c_decap(s, bytes(wire))
    assert (verdict, nh) == (Verdict.OK, 6)
    assert IP(orig).src == "203.0.113.9" and IP(orig).proto == 6 and IP(orig).len == len(orig)
    assert l4_checksum_ok(orig)
    assert not l4_checksum_ok(bytes(wire[:20]) + private[20:])  # it was wrong before the fix
    # the reference agrees byte for byte
    t = ref.EspInboundTable()
    t.add(cfg(s))
    assert ref_transport.decap_transport(t, bytes(wire)).payload == orig


def test_transport_keeps_ipv4_options_and_ipv6_ext_headers() -> None:
    s = SUITES[0]
    v4 = bytes(IP(src=A4, dst=B4, options=b"\x94\x04\x00\x00") / UDP(sport=5, dport=8080) / Raw(b"o" * 33))
    v6 = bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / UDP(sport=5, dport=8080) / Raw(b"e" * 33))
    for pkt, hl in ((v4, 24), (v6, 48)):
        wire = c_encap(s, pkt)
        if hl == 48:  # addresses and the options header (but its next header) unchanged
            assert wire[8:40] == pkt[8:40] and wire[41:48] == pkt[41:48] and wire[6] == pkt[6] == 60
        else:  # addresses and the option unchanged
            assert wire[12:24] == pkt[12:24]
        assert (wire[40] if hl == 48 else wire[9]) == 50  # the last next-header field is ESP
        assert int.from_bytes(wire[hl:hl + 4], "big") == SPI
        dec = scapy_sa(s, v6=hl == 48).decrypt((IPv6 if hl == 48 else IP)(wire))
        assert bytes(dec) == pkt
        assert c_decap(s, wire)[1] == pkt


def test_transport_refuses_fragments_and_garbage() -> None:
    s = SUITES[0]
    frag4 = bytes(IP(src=A4, dst=B4, flags="MF") / UDP(sport=1, dport=2) / Raw(b"f" * 40))
    frag6 = bytes(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1) / UDP(sport=1, dport=2) / Raw(b"f" * 40))
    bad = [frag4, frag6, b"", b"\x45" + bytes(10), b"\x70" * 60, bytes(IP(src=A4, dst=B4, len=400) / Raw(b"z"))]
    out = native.EspOutbound(cfg(s))
    res = out.encap_transport_batch(bad)
    assert [v for v, _ in res] == [Verdict.BAD_HEADER] * len(bad)
    assert out.counters.bad_header == len(bad) and out.counters.packets == 0 and out.next_seq == 1
    r_out = ref.EspOutbound(cfg(s))
    assert [ref_transport.encap_transport(r_out, p)[0] for p in bad] == [Verdict.BAD_HEADER] * len(bad)
    # inbound: not ESP / not UDP, fragments
    t = native.EspInboundTable()
    t.add(cfg(s))
    plain = tcp8080(False)
    esp_frag = bytearray(c_encap(s, plain))
    esp_frag[6] |= 0x20  # MF
    got = t.decap_transport_batch([plain, bytes(esp_frag), b"", b"\x60" + bytes(20)])
    assert [r.verdict for r in got] == [Verdict.BAD_HEADER, Verdict.BAD_HEADER, Verdict.TOO_SHORT,
                                        Verdict.BAD_HEADER]
    assert t.counters.bad_header == 3


# ---------------------------------------------------------------- C vs reference (hypothesis)
@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    data = Raw(draw(st.binary(max_size=1400)))
    l4 = {"tcp": TCP(sport=draw(st.integers(1, 65535)), dport=8080), "udp": UDP(sport=53, dport=8080),
          "icmp": ICMPv6EchoRequest() if v6 else ICMP()}[proto]  # (v4 ICMP in IPv6 would be nh 59: TFC)
    ip = IPv6(src=A6, dst=B6) if v6 else IP(src=A4, dst=B4, id=draw(st.integers(0, 65535)))
    return bytes(ip / l4 / data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), s=st.sampled_from(SUITES), esn=st.booleans(), udp=st.booleans())
def test_transport_c_matches_reference(data: st.DataObject, s: Suite, esn: bool, udp: bool) -> None:
    pkts = data.draw(st.lists(ip_packets(), min_size=1, max_size=8))
    ivs = [iv_for(s, i + 1) for i in range(len(pkts))]
    c_out, r_out = native.EspOutbound(cfg(s, esn=esn)), ref.EspOutbound(cfg(s, esn=esn))
    c_res = c_out.encap_transport_batch(pkts, ivs=ivs)
    r_res = [ref_transport.encap_transport(r_out, p, iv=iv) for p, iv in zip(pkts, ivs, strict=True)]
    assert c_res == r_res
    assert c_out.counters == r_out.counters
    wires = [w for _v, w in c_res]
    if udp:  # as received on a NAT-T socket with the IP header put back (the C loop's view)
        wires = [framing.join_transport(*_split_esp(w), udp_ports=(4500, 4500)) for w in wires]
    c_t, r_t = native.EspInboundTable(), ref.EspInboundTable()
    c_t.add(cfg(s, esn=esn))
    r_t.add(cfg(s, esn=esn))
    c_dec = c_t.decap_transport_batch(wires)
    r_dec = [ref_transport.decap_transport(r_t, w) for w in wires]
    assert c_dec == r_dec
    assert [(r.verdict, r.payload) for r in c_dec] == [(Verdict.OK, p) for p in pkts]
    assert c_t.counters_for(SPI) == r_t.counters_for(SPI)


def _split_esp(wire: bytes) -> tuple[bytes, bytes]:
    info = framing.parse_ip(wire)
    return wire[:info.header_len], wire[info.header_len:]
