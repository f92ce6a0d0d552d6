"""Traffic selectors on inner packets (``dataplane.selectors``, the twin of the C lookup): the
header fields they read, protocol/port ranges, ICMP type/code, fragments, IPv6 extension
headers, and which policy wins."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ipsecemu.dataplane.selectors import fits_inbound, fits_outbound, packet_selectors, pick_outbound
from ipsecemu.ike.ts import TrafficSelector

TS = TrafficSelector.from_cidr


def v4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + l4


def v6(src: str, dst: str, nh: int, rest: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(rest), nh, 64) + ipaddress.IPv6Address(src).packed + \
        ipaddress.IPv6Address(dst).packed + rest


def test_fields_tcp_icmp_and_later_fragments() -> None:
    p = packet_selectors(v4("10.1.0.2", "10.2.0.2", 6, struct.pack("!HH", 40000, 443) + bytes(16)))
    assert p is not None and (str(p.src), str(p.dst), p.proto, p.sport, p.dport) == ("10.1.0.2", "10.2.0.2", 6, 40000, 443)
    icmp = packet_selectors(v4("10.1.0.2", "10.2.0.2", 1, b"\x08\x00" + bytes(6)))
    assert icmp is not None and icmp.sport == icmp.dport == 0x0800  # echo request: type 8, code 0
    later = packet_selectors(v4("10.1.0.2", "10.2.0.2", 17, bytes(8), frag=185))
    assert later is not None and later.sport is None  # ports OPAQUE
    assert packet_selectors(b"\x45" + bytes(10)) is None and packet_selectors(b"\x00" * 40) is None


def test_ipv6_walks_extension_headers_to_the_ports() -> None:
    hop = bytes([6, 0]) + bytes(6)  # hop-by-hop, next: TCP
    p = packet_selectors(v6("2001:db8::1", "2001:db8:1::1", 0, hop + struct.pack("!HH", 1234, 22) + bytes(16)))
    assert p is not None and (p.proto, p.sport, p.dport) == (6, 1234, 22)
    frag = bytes([17, 0]) + struct.pack("!H", 8) + bytes(4)  # a later fragment of UDP
    q = packet_selectors(v6("2001:db8::1", "2001:db8:1::1", 44, frag + bytes(8)))
    assert q is not None and q.proto == 17 and q.dport is None


@pytest.mark.parametrize(("pkt", "want"), [
    (v4("10.1.0.2", "10.2.0.2", 6, struct.pack("!HH", 5000, 443)), 0),   # the HTTPS-only child
    (v4("10.1.0.2", "10.2.0.2", 6, struct.pack("!HH", 5000, 22)), 1),    # other TCP: the subnet child
    (v4("10.1.0.2", "10.2.0.2", 6, bytes(2)), 1),                        # no ports: only "any port" fits
    (v4("10.1.0.2", "10.3.0.2", 17, struct.pack("!HH", 53, 53)), None),  # no child covers it
])
def test_first_matching_policy_wins(pkt: bytes, want: int | None) -> None:
    https = TrafficSelector(ipaddress.IPv4Address("10.2.0.0"), ipaddress.IPv4Address("10.2.0.255"), 6, 443, 443)
    policies = [([TS("10.1.0.0/24")], [https]), ([TS("10.1.0.0/24")], [TS("10.2.0.0/24")])]
    assert pick_outbound(pkt, policies) == want


def test_inbound_is_the_mirror_of_outbound() -> None:
    local, remote = [TS("10.1.0.0/24")], [TS("10.2.0.0/24")]
    p = packet_selectors(v4("10.2.0.2", "10.1.0.2", 1, bytes(8)))
    assert p is not None and fits_inbound(p, local, remote) and not fits_outbound(p, local, remote)
    q = packet_selectors(v4("10.3.0.2", "10.1.0.2", 1, bytes(8)))
    assert q is not None and not fits_inbound(q, local, remote)
