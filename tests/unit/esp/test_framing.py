"""Outer framing helpers, checked against scapy's own header builders/parsers."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from ipsecemu.esp.framing import (
    ESP_PROTO,
    UDP_PROTO,
    FramingError,
    build_ipv4,
    build_ipv6,
    build_udp,
    classify_udp_payload,
    fix_l4_checksum,
    frame_tunnel,
    inner_next_header,
    ip_checksum,
    join_transport,
    parse_ip,
    parse_outer,
    restore_transport,
    split_transport,
)

ESP = bytes.fromhex("0000abcd00000001") + b"\x11" * 40


def test_ipv4_header_matches_scapy() -> None:
    ours = build_ipv4("192.0.2.1", "198.51.100.2", ESP_PROTO, ESP, ttl=33, ident=77)
    theirs = bytes(IP(src="192.0.2.1", dst="198.51.100.2", proto=ESP_PROTO, ttl=33, id=77, flags=0) / Raw(ESP))
    assert ours == theirs
    assert ip_checksum(ours[:20]) == 0  # a valid header sums to 0


def test_ipv6_header_matches_scapy() -> None:
    ours = build_ipv6("2001:db8::1", "2001:db8::2", ESP_PROTO, ESP, hop_limit=9)
    theirs = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=ESP_PROTO, hlim=9) / Raw(ESP))
    assert ours == theirs


@pytest.mark.parametrize("src,dst,ip_cls", [("192.0.2.1", "192.0.2.2", IP), ("2001:db8::1", "2001:db8::2", IPv6)])
def test_udp_encapsulation_matches_scapy(src: str, dst: str, ip_cls: type) -> None:
    pkt = frame_tunnel(ESP, src, dst, udp_ports=(4500, 4500))
    parsed = ip_cls(pkt)
    assert parsed[UDP].sport == 4500 and parsed[UDP].dport == 4500
    assert bytes(parsed[UDP].payload) == ESP
    if ip_cls is IPv6:  # mandatory checksum over IPv6: compare with scapy's own computation
        expected = ip_cls(src=src, dst=dst) / UDP(sport=4500, dport=4500) / Raw(ESP)
        assert parsed[UDP].chksum == ip_cls(bytes(expected))[UDP].chksum != 0
    else:
        assert parsed[UDP].chksum == 0  # RFC 3948 3.1: zero over IPv4
    assert build_udp(1, 2, b"x", src=src, dst=dst, checksum=True)[6:8] != b"\x00\x00"


def test_classify_udp_payload() -> None:
    assert classify_udp_payload(b"\xff") == "keepalive"
    assert classify_udp_payload(b"\x00\x00\x00\x00" + b"ike header...") == "ike"
    assert classify_udp_payload(ESP) == "esp"
    assert classify_udp_payload(b"\x01\x02") == "other"
    assert classify_udp_payload(b"") == "other"


def test_parse_outer_kinds() -> None:
    raw = parse_outer(frame_tunnel(ESP, "192.0.2.1", "192.0.2.2"))
    assert raw.kind == "esp" and raw.payload == ESP and raw.udp_ports is None
    udp = parse_outer(frame_tunnel(ESP, "2001:db8::1", "2001:db8::2", udp_ports=(40000, 4500)))
    assert udp.kind == "esp" and udp.payload == ESP and udp.udp_ports == (40000, 4500)
    ike = parse_outer(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0IKE!")))
    assert ike.kind == "ike" and ike.payload == b"IKE!"
    ka = parse_outer(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=4500, dport=4500) / Raw(b"\xff")))
    assert ka.kind == "keepalive"
    dns = parse_outer(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=53, dport=53) / Raw(ESP)))
    assert dns.kind == "other"
    custom = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=14500, dport=14500) / Raw(ESP))
    assert parse_outer(custom).kind == "other"
    assert parse_outer(custom, nat_t_ports=(14500,)).kind == "esp"


def test_parse_outer_ignores_ethernet_padding_and_rejects_truncation() -> None:
    pkt = frame_tunnel(ESP, "192.0.2.1", "192.0.2.2")
    assert parse_outer(pkt + b"\x00" * 6).payload == ESP
    for n in (0, 1, 19, 20, len(pkt) - 1):
        with pytest.raises(FramingError):
            parse_outer(pkt[:n])
    with pytest.raises(FramingError, match="not an IP"):
        parse_outer(b"\x00" * 40)
    bad_udp = bytearray(frame_tunnel(ESP, "192.0.2.1", "192.0.2.2", udp_ports=(4500, 4500)))
    bad_udp[24:26] = (500).to_bytes(2, "big")  # UDP length beyond the datagram
    with pytest.raises(FramingError, match="UDP length"):
        parse_outer(bytes(bad_udp))


def test_parse_ip_options_and_extension_headers() -> None:
    v4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x94\x04\x00\x00"]) / TCP() / Raw(b"x"))
    info = parse_ip(v4)
    assert (info.version, info.header_len, info.proto, info.src) == (4, 24, 6, "10.0.0.1")
    v6 = bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
               / UDP() / Raw(b"y"))
    info6 = parse_ip(v6)
    assert info6.proto == UDP_PROTO and info6.header_len == 40 + 8 + 8 + 8 and not info6.fragment
    frag = bytes(IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment(offset=10, m=1) / Raw(b"z" * 8))
    assert parse_ip(frag).fragment
    frag4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / Raw(b"z" * 8))
    assert parse_ip(frag4).fragment
    assert parse_outer(frag4).kind == "other"


def test_inner_next_header() -> None:
    assert inner_next_header(bytes(IP() / ICMP())) == 4
    assert inner_next_header(bytes(IPv6() / ICMP())) == 41
    for bad in (b"", b"\x00abc"):
        with pytest.raises(FramingError):
            inner_next_header(bad)


@pytest.mark.parametrize("udp_ports", [None, (4500, 4500)])
def test_transport_ipv4_with_options_round_trip(udp_ports: tuple[int, int] | None) -> None:
    orig = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=42, ttl=7, options=[b"\x94\x04\x00\x00"])
                 / TCP(sport=1, dport=2) / Raw(b"data" * 5))
    header, proto, data = split_transport(orig)
    assert proto == 6 and len(header) == 24 and data == orig[24:]
    esp = b"\x00\x00\x01\x00" + b"E" * 30  # stands in for the encrypted packet
    out = join_transport(header, esp, udp_ports=udp_ports)
    parsed = IP(out)
    assert parsed.id == 42 and parsed.ttl == 7 and parsed.len == len(out)
    assert parsed.proto == (UDP_PROTO if udp_ports else ESP_PROTO)
    fresh = parsed.copy()
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == parsed.chksum  # stored checksum == scapy's recomputation
    outer = parse_outer(out)
    assert outer.kind == "esp" and outer.payload == esp
    assert restore_transport(outer.header, proto, data) == orig


def test_transport_ipv6_with_extension_headers() -> None:
    orig = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(sport=5, dport=6)
                 / Raw(b"v6 payload"))
    header, proto, data = split_transport(orig)
    assert proto == UDP_PROTO and len(header) == 48
    esp = b"\x00\x00\x01\x00" + b"E" * 24
    out = join_transport(header, esp)
    parsed = IPv6(out)
    assert parsed[IPv6ExtHdrHopByHop].nh == ESP_PROTO and parsed.nh == 0 and parsed.plen == 8 + len(esp)
    outer = parse_outer(out)
    assert outer.kind == "esp" and outer.payload == esp
    assert restore_transport(outer.header, proto, data) == orig


def test_transport_refuses_fragments_and_bad_headers() -> None:
    with pytest.raises(FramingError, match="fragment"):
        split_transport(bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=3) / Raw(b"x" * 8)))
    with pytest.raises(FramingError):
        restore_transport(b"\x45\x00", 6, b"")
    with pytest.raises(FramingError):
        build_ipv4("300.1.1.1", "10.0.0.1", 6, b"")
    with pytest.raises(FramingError, match="IPv6"):
        build_ipv6("10.0.0.1", "10.0.0.2", 6, b"")
    with pytest.raises(FramingError, match="too big"):
        build_ipv4("10.0.0.1", "10.0.0.2", 6, b"\x00" * 70000)


@pytest.mark.parametrize("ip_cls,src,dst,nat", [(IP, "10.0.0.1", "10.0.0.2", "192.0.2.99"),
                                                (IPv6, "fd00::1", "fd00::2", "2001:db8::99")])
@pytest.mark.parametrize("l4", [TCP(sport=1, dport=2, flags="S"), UDP(sport=3, dport=4)])
def test_fix_l4_checksum_after_nat(ip_cls: type, src: str, dst: str, nat: str, l4: object) -> None:
    """Transport mode through NAT: the restored packet carries the NATed source address but
    the sender's TCP/UDP checksum; compare the fix with scapy's own checksum."""
    sent = ip_cls(bytes(ip_cls(src=src, dst=dst) / l4 / Raw(b"nat-t transport")))
    header, proto, data = split_transport(bytes(sent))
    restored = ip_cls(restore_transport(header, proto, data))
    restored.src = nat  # what the receiver sees after NAT
    if ip_cls is IP:
        del restored.chksum
    stale = bytes(restored)
    want = ip_cls(stale)
    del (want[TCP] if TCP in want else want[UDP]).chksum
    fixed = fix_l4_checksum(stale)
    assert fixed == bytes(ip_cls(bytes(want))) != stale


def test_fix_l4_checksum_leaves_others_alone() -> None:
    icmp = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP())
    assert fix_l4_checksum(icmp) == icmp
    no_sum = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / Raw(b"x")))
    no_sum[26:28] = b"\0\0"  # IPv4 UDP without checksum stays without
    assert fix_l4_checksum(bytes(no_sum)) == bytes(no_sum)
