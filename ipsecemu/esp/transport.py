"""Transport-mode ESP on whole IP packets (RFC 4303 §3.1.1), the reference for the C path's
``ie_esp_encap_transport`` / ``ie_esp_decap_transport``: framing from :mod:`ipsecemu.esp.framing`
around any backend's outbound SA / inbound table (they share one interface).

Outbound: the upper-layer data is encrypted with next header = its protocol; ESP sits after the
IP header (IPv4 options / IPv6 extension headers kept), whose protocol becomes 50.
Inbound: ``IP | ESP`` or ``IP | UDP | ESP`` (RFC 3948, any UDP port: the caller classified it);
the result is the original packet, and after UDP encapsulation its TCP/UDP checksum is
recomputed (RFC 3948 §3.1.3: a NAT changed the addresses the sender summed).
A fragment or malformed header is BAD_HEADER (outbound: counted on the SA; inbound: on the table).
"""

from __future__ import annotations

from typing import Any

from ipsecemu.base.satypes import DecapResult, Verdict
from ipsecemu.esp import framing

__all__ = ["encap_transport", "decap_transport"]


def encap_transport(out: Any, packet: bytes, *, iv: bytes | None = None) -> tuple[Verdict, bytes]:
    """``out``: an EspOutbound (any backend).  Returns (verdict, the ESP-protected packet)."""
    try:
        header, proto, data = framing.split_transport(bytes(packet))
    except framing.FramingError:
        out.counters.bad_header += 1
        return Verdict.BAD_HEADER, b""
    verdict, esp = out.encap(data, proto, iv=iv)
    if verdict != Verdict.OK:
        return verdict, b""
    return verdict, framing.join_transport(header, esp)


def decap_transport(table: Any, packet: bytes) -> DecapResult:
    """``table``: an EspInboundTable (any backend).  On OK ``payload`` is the original packet."""
    packet = bytes(packet)
    if not packet:
        table.counters.too_short += 1
        return DecapResult(Verdict.TOO_SHORT)
    try:
        info = framing.parse_ip(packet)
    except framing.FramingError:
        info = None
    if info is None or info.fragment or info.proto not in (framing.ESP_PROTO, framing.UDP_PROTO):
        table.counters.bad_header += 1
        return DecapResult(Verdict.BAD_HEADER)
    udp = info.proto == framing.UDP_PROTO
    start = info.header_len + (8 if udp else 0)
    if start > info.total_len:
        table.counters.too_short += 1
        return DecapResult(Verdict.TOO_SHORT)
    res: DecapResult = table.decap(packet[start: info.total_len])
    if res.verdict == Verdict.TFC_DUMMY:
        return res
    if res.verdict != Verdict.OK:
        return res
    orig = framing.restore_transport(packet[: info.header_len], res.next_header, res.payload)
    if udp:
        orig = framing.fix_l4_checksum(orig)
    return DecapResult(Verdict.OK, orig, res.next_header, res.seq, res.spi)
