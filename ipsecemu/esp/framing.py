"""Outer framing for ESP packets: IPv4/IPv6 headers, RFC 3948 UDP encapsulation, and tunnel /
transport mode.  The ESP transform itself (:mod:`ipsecemu.esp.reference` or the native
backend) only ever sees ``SPI | seq | IV | ciphertext | ICV``.

Tunnel mode: the ESP payload is a whole inner IP packet (next header 4 for IPv4, 41 for
IPv6) and the outer header is new (:func:`frame_tunnel`).
Transport mode: ESP is inserted after the IP header (after IPv4 options / IPv6 extension
headers); the upper-layer protocol becomes the ESP next header and the IP header's protocol,
length and checksum are rewritten (:func:`split_transport`, :func:`join_transport`,
:func:`restore_transport`).
ESP-in-UDP (RFC 3948): on the configured ports a UDP payload is a NAT-keepalive (one 0xFF
byte), an IKE message (starts with the 4-byte non-ESP marker, zero) or ESP (non-zero SPI).

Malformed input raises :class:`FramingError` (a ValueError) with a message saying what is
wrong; nothing here logs packet contents.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ipsecemu.base.errors import ProtocolError

__all__ = [
    "ESP_PROTO", "UDP_PROTO", "IPIP_PROTO", "IPV6_PROTO", "NAT_T_PORT", "FramingError", "IpInfo",
    "Outer", "ip_checksum", "build_ipv4", "build_ipv6", "build_ip", "parse_ip", "build_udp",
    "classify_udp_payload", "inner_next_header", "frame_tunnel", "parse_outer", "split_transport",
    "join_transport", "restore_transport", "fix_l4_checksum",
]

ESP_PROTO = 50
UDP_PROTO = 17
IPIP_PROTO = 4  # ESP next header for an inner IPv4 packet
IPV6_PROTO = 41  # ESP next header for an inner IPv6 packet
NAT_T_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"
# IPv6 extension headers that sit before ESP (RFC 4303 3.1.1: hop-by-hop, routing, fragment,
# destination options).  They share the "next header, length in 8-octet units - 1" layout except
# the fragment header (fixed 8 bytes).
_IPV6_EXT = {0, 43, 44, 60}


class FramingError(ProtocolError, ValueError):
    """The packet cannot be framed/unframed; the message says why."""


@dataclass(frozen=True)
class IpInfo:
    version: int
    src: str
    dst: str
    proto: int  # protocol of what follows the IP header (after IPv6 extension headers)
    header_len: int  # bytes up to the upper-layer payload (IPv4 options / IPv6 ext headers included)
    total_len: int  # packet length according to the header
    proto_offset: int  # where the byte holding ``proto`` lives (rewritten in transport mode)
    fragment: bool = False


@dataclass(frozen=True)
class Outer:
    """A parsed outer packet.  ``kind`` is "esp", "ike", "keepalive" or "other"; ``payload``
    is the ESP packet for "esp", the IKE message (marker removed) for "ike", else the IP payload."""

    ip: IpInfo
    header: bytes  # the IP header bytes (incl. options / extension headers)
    kind: str
    payload: bytes
    udp_ports: tuple[int, int] | None = None  # (source, destination) when UDP-encapsulated


def ip_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(value: str | bytes, version: int) -> bytes:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as exc:
        raise FramingError(f"not an IP address: {value!r}") from exc
    if addr.version != version:
        raise FramingError(f"{str(value)} is not an IPv{version} address")
    return addr.packed


def build_ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0,
               tos: int = 0, df: bool = False) -> bytes:
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise FramingError(f"IPv4 packet too big: {total} bytes")
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000 if df else 0, ttl, proto, 0,
                      _addr(src, 4), _addr(dst, 4))
    return hdr[:10] + struct.pack("!H", ip_checksum(hdr)) + hdr[12:] + payload


def build_ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64,
               traffic_class: int = 0, flow_label: int = 0) -> bytes:
    if len(payload) > 0xFFFF:
        raise FramingError(f"IPv6 payload too big: {len(payload)} bytes (no jumbograms)")
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return struct.pack("!IHBB16s16s", first, len(payload), next_header, hop_limit,
                       _addr(src, 6), _addr(dst, 6)) + payload


def build_ip(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """IPv4 or IPv6 header chosen by the address family of ``src``."""
    try:
        version = ipaddress.ip_address(src).version
    except ValueError as exc:
        raise FramingError(f"not an IP address: {src!r}") from exc
    if version == 4:
        return build_ipv4(src, dst, proto, payload, ttl=ttl)
    return build_ipv6(src, dst, proto, payload, hop_limit=ttl)


def parse_ip(packet: bytes) -> IpInfo:
    if not packet:
        raise FramingError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise FramingError(f"truncated IPv4 header: {len(packet)} bytes")
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        if ihl < 20 or total < ihl or len(packet) < total:
            raise FramingError(f"bad IPv4 lengths: ihl={ihl} total={total} captured={len(packet)}")
        frag = struct.unpack_from("!H", packet, 6)[0]
        return IpInfo(4, str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20])),
                      packet[9], ihl, total, 9, bool(frag & 0x3FFF))
    if version == 6:
        if len(packet) < 40:
            raise FramingError(f"truncated IPv6 header: {len(packet)} bytes")
        total = 40 + struct.unpack_from("!H", packet, 4)[0]
        if len(packet) < total:
            raise FramingError(f"truncated IPv6 packet: header says {total} bytes, captured {len(packet)}")
        nh, nh_off, off, fragment = packet[6], 6, 40, False
        while nh in _IPV6_EXT:
            if off + 8 > total:
                raise FramingError("truncated IPv6 extension header")
            if nh == 44:
                fragment = fragment or bool(struct.unpack_from("!H", packet, off + 2)[0] & 0xFFF9)
                length = 8
            else:
                length = (packet[off + 1] + 1) * 8
            nh, nh_off, off = packet[off], off, off + length
        if off > total:
            raise FramingError("truncated IPv6 extension header")
        return IpInfo(6, str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40])),
                      nh, off, total, nh_off, fragment)
    raise FramingError(f"not an IP packet (version {version})")


def _udp_checksum(src: str, dst: str, udp: bytes) -> int:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, UDP_PROTO, len(udp))
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", len(udp), UDP_PROTO)
    csum = ip_checksum(pseudo + udp)
    return csum or 0xFFFF


def build_udp(sport: int, dport: int, payload: bytes, *, src: str | None = None, dst: str | None = None,
              checksum: bool | None = None) -> bytes:
    """A UDP header + payload.  The checksum is computed when ``checksum`` is true, and by
    default only for IPv6 (mandatory there); RFC 3948 3.1 says ESP-in-UDP over IPv4 sends 0."""
    length = 8 + len(payload)
    if length > 0xFFFF:
        raise FramingError(f"UDP datagram too big: {length} bytes")
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if checksum is None:
        checksum = src is not None and ipaddress.ip_address(src).version == 6
    if checksum:
        if src is None or dst is None:
            raise FramingError("a UDP checksum needs the src and dst addresses")
        udp = udp[:6] + struct.pack("!H", _udp_checksum(src, dst, udp)) + udp[8:]
    return udp


def classify_udp_payload(payload: bytes) -> str:
    """RFC 3948 2.2/2.3: "keepalive" (single 0xFF), "ike" (non-ESP marker), "esp", or
    "other" (too short to be ESP: an ESP header alone is 8 bytes)."""
    if payload == b"\xff":
        return "keepalive"
    if payload[:4] == NON_ESP_MARKER and len(payload) >= 4:
        return "ike"
    if len(payload) >= 8:
        return "esp"
    return "other"


def inner_next_header(inner: bytes) -> int:
    """ESP next header for a tunnel-mode inner packet: 4 (IPv4) or 41 (IPv6)."""
    version = inner[0] >> 4 if inner else 0
    if version == 4:
        return IPIP_PROTO
    if version == 6:
        return IPV6_PROTO
    raise FramingError(f"tunnel-mode inner packet is not IPv4/IPv6 (version {version})")


def frame_tunnel(esp: bytes, src: str, dst: str, *, udp_ports: tuple[int, int] | None = None,
                 ttl: int = 64) -> bytes:
    """Outer IP header (+ UDP when ``udp_ports`` = (sport, dport)) around an ESP packet."""
    if udp_ports is not None:
        return build_ip(src, dst, UDP_PROTO, build_udp(*udp_ports, esp, src=src, dst=dst), ttl=ttl)
    return build_ip(src, dst, ESP_PROTO, esp, ttl=ttl)


def parse_outer(packet: bytes, *, nat_t_ports: tuple[int, ...] = (NAT_T_PORT,)) -> Outer:
    """Find the ESP packet in an IP packet: raw protocol 50, or UDP to/from one of
    ``nat_t_ports``.  Trailing bytes beyond the IP length (Ethernet padding) are ignored."""
    info = parse_ip(packet)
    header, body = packet[: info.header_len], packet[info.header_len: info.total_len]
    if info.fragment:
        return Outer(info, header, "other", body)
    if info.proto == ESP_PROTO:
        return Outer(info, header, "esp", body)
    if info.proto == UDP_PROTO and len(body) >= 8:
        sport, dport, ulen = struct.unpack_from("!HHH", body)
        if sport in nat_t_ports or dport in nat_t_ports:
            if ulen < 8 or ulen > len(body):
                raise FramingError(f"bad UDP length {ulen} (datagram has {len(body)} bytes)")
            data = body[8:ulen]
            kind = classify_udp_payload(data)
            if kind == "ike":
                data = data[4:]
            return Outer(info, header, kind, data, (sport, dport))
    return Outer(info, header, "other", body)


def _rewrite(header: bytes, info: IpInfo, proto: int, payload_len: int) -> bytes:
    """Set protocol (the last next-header field) and lengths, and the IPv4 checksum."""
    hdr = bytearray(header)
    hdr[info.proto_offset] = proto
    if info.version == 4:
        total = len(hdr) + payload_len
        if total > 0xFFFF:
            raise FramingError(f"IPv4 packet too big: {total} bytes")
        struct.pack_into("!H", hdr, 2, total)
        hdr[10:12] = b"\x00\x00"
        hdr[10:12] = struct.pack("!H", ip_checksum(bytes(hdr)))
    else:
        plen = len(hdr) - 40 + payload_len
        if plen > 0xFFFF:
            raise FramingError(f"IPv6 payload too big: {plen} bytes")
        struct.pack_into("!H", hdr, 4, plen)
    return bytes(hdr)


def split_transport(ip_packet: bytes) -> tuple[bytes, int, bytes]:
    """Transport mode, outbound: (IP header, upper-layer protocol, upper-layer data).  The
    protocol becomes the ESP next header; encrypt the data, then :func:`join_transport`."""
    info = parse_ip(ip_packet)
    if info.fragment:
        raise FramingError("transport mode cannot protect a fragment (reassemble first)")
    return ip_packet[: info.header_len], info.proto, ip_packet[info.header_len: info.total_len]


def join_transport(header: bytes, esp: bytes, *, udp_ports: tuple[int, int] | None = None) -> bytes:
    """Transport mode, outbound: put ESP (optionally in UDP) after the original IP header."""
    info = _header_info(header)
    if udp_ports is not None:
        body = build_udp(*udp_ports, esp, src=info.src, dst=info.dst)
        return _rewrite(header, info, UDP_PROTO, len(body)) + body
    return _rewrite(header, info, ESP_PROTO, len(esp)) + esp


def restore_transport(header: bytes, next_header: int, payload: bytes) -> bytes:
    """Transport mode, inbound: the original packet from the outer IP header, the ESP next
    header and the decrypted upper-layer data (RFC 3948 NAT checksum fix-ups not applied)."""
    info = _header_info(header)
    return _rewrite(header, info, next_header, len(payload)) + payload


def fix_l4_checksum(ip_packet: bytes) -> bytes:
    """Recompute the TCP/UDP checksum of a restored transport-mode packet (RFC 3948 3.1.2:
    after NAT the addresses in the outer header differ from the ones the sender summed).
    A zero IPv4 UDP checksum ("none") is left alone; other protocols pass through."""
    info = parse_ip(ip_packet)
    off = info.header_len
    if info.fragment or info.proto not in (6, UDP_PROTO):
        return ip_packet
    l4 = bytearray(ip_packet[off: info.total_len])
    csum_at = 16 if info.proto == 6 else 6
    if len(l4) < csum_at + 2 or (info.proto == UDP_PROTO and info.version == 4 and l4[6:8] == b"\0\0"):
        return ip_packet
    l4[csum_at: csum_at + 2] = b"\0\0"
    s, d = ipaddress.ip_address(info.src), ipaddress.ip_address(info.dst)
    if info.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, info.proto, len(l4))
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", len(l4), info.proto)
    csum = ip_checksum(pseudo + bytes(l4))
    if info.proto == UDP_PROTO and csum == 0:
        csum = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    l4[csum_at: csum_at + 2] = struct.pack("!H", csum)
    return ip_packet[:off] + bytes(l4) + ip_packet[info.total_len:]


def _header_info(header: bytes) -> IpInfo:
    """Parse a bare IP header (the lengths inside may describe a longer packet)."""
    if not header:
        raise FramingError("empty IP header")
    padded = bytearray(header)
    if header[0] >> 4 == 4 and len(header) >= 20:
        struct.pack_into("!H", padded, 2, len(header))
    elif header[0] >> 4 == 6 and len(header) >= 40:
        struct.pack_into("!H", padded, 4, len(header) - 40)
    info = parse_ip(bytes(padded))
    if info.header_len != len(header):
        raise FramingError(f"IP header is {info.header_len} bytes, got {len(header)}")
    return info
