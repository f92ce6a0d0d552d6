"""ESP-in-UDP datagrams merged by UDP GSO/GRO, cut apart again.

A veth carries UDP GSO trains unsegmented, so tcpdump on the *sending* end sees a train as one
UDP packet, and on the *receiving* end UDP GRO merges datagrams the same way: one UDP packet whose
payload is several ESP datagrams of one SA back to back, which decrypted as one ESP packet fails
its ICV.  Both ``pcap decrypt`` (:mod:`ipsecemu.pcap.decrypt`) and ``lab audit`` split such a frame
here first, over IPv4 and IPv6 underlays and every link type they read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ipsecemu.pcap.pcapfile import (
    LT_ETHERNET,
    LT_IPV4,
    LT_IPV6,
    LT_LOOP,
    LT_NULL,
    LT_RAW,
    LT_SLL,
    LT_SLL2,
    RAW_ALIASES,
    PcapWriter,
    read_capture,
)

__all__ = ["SplitCounts", "split_coalesced", "split_file"]

_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = {0x8100, 0x88A8, 0x9100}
_UDP = 17


def _l3_offset(frame: bytes, linktype: int) -> int | None:
    """Where the IP header starts in a frame of ``linktype`` (None: not an IP packet we can cut)."""
    if linktype == LT_ETHERNET:
        off = 12
        while off + 6 <= len(frame) and struct.unpack_from("!H", frame, off)[0] in _VLAN_TPIDS:
            off += 4  # 802.1Q / QinQ tags
        if off + 2 > len(frame) or struct.unpack_from("!H", frame, off)[0] not in (_ETH_IPV4, _ETH_IPV6):
            return None
        return off + 2
    if linktype in (LT_RAW, LT_IPV4, LT_IPV6) or linktype in RAW_ALIASES:
        return 0
    if linktype in (LT_NULL, LT_LOOP):
        return 4
    if linktype == LT_SLL:
        return 16 if len(frame) >= 16 and struct.unpack_from("!H", frame, 14)[0] in (_ETH_IPV4, _ETH_IPV6) else None
    if linktype == LT_SLL2:
        return 20 if len(frame) >= 20 and struct.unpack_from("!H", frame, 0)[0] in (_ETH_IPV4, _ETH_IPV6) else None
    return None


def split_coalesced(frame: bytes, linktype: int = LT_ETHERNET) -> list[bytes]:
    """A frame whose UDP payload is several ESP datagrams of one SA glued together (a GSO train or a
    GRO-merged packet) -> one frame per datagram, cut where the SPI comes back with the next sequence
    number, each with its IP/UDP lengths fixed; [] when the frame is not like that.  The caller
    decrypts every part: a cut that does not give valid ICVs proves nothing."""
    off = _l3_offset(frame, linktype)
    if off is None or len(frame) < off + 1:
        return []
    version = frame[off] >> 4
    if version == 4 and len(frame) >= off + 20 and frame[off + 9] == _UDP:
        iphl = (frame[off] & 0x0F) * 4
    elif version == 6 and len(frame) >= off + 40 and frame[off + 6] == _UDP:
        iphl = 40  # UDP right after the fixed header (a train never carries extension headers)
    else:
        return []
    udp = frame[off + iphl:]
    payload = udp[8:]
    if len(udp) < 8 or len(payload) < 16 or payload[:4] == b"\0\0\0\0":  # zero SPI: IKE's non-ESP marker
        return []
    spi, seq = payload[:4], struct.unpack("!I", payload[4:8])[0]
    cuts = [0]
    while True:
        nxt = payload.find(spi + struct.pack("!I", (seq + len(cuts)) & 0xFFFFFFFF), cuts[-1] + 16)
        if nxt < 0:
            break
        cuts.append(nxt)
    if len(cuts) == 1:
        return []
    out = []
    ip_hdr = bytearray(frame[off:off + iphl])
    for a, b in zip(cuts, [*cuts[1:], len(payload)], strict=True):
        seg = payload[a:b]
        if version == 4:
            struct.pack_into("!H", ip_hdr, 2, iphl + 8 + len(seg))
            struct.pack_into("!H", ip_hdr, 10, 0)  # the header checksum no longer holds; nobody checks it here
        else:
            struct.pack_into("!H", ip_hdr, 4, 8 + len(seg))  # IPv6 payload length
        udp_hdr = udp[:4] + struct.pack("!HH", 8 + len(seg), 0)  # checksum 0: not verified when decrypting
        out.append(frame[:off] + bytes(ip_hdr) + udp_hdr + seg)
    return out


@dataclass
class SplitCounts:
    """What :func:`split_file` did (also the writer's counters)."""

    trains: int = 0  # frames that held several ESP datagrams
    datagrams: int = 0  # the datagrams they held
    written: int = 0
    clamped: int = 0


def split_file(path: str | Path) -> SplitCounts:
    """Rewrite the capture at ``path`` with every GSO/GRO train cut into one frame per ESP datagram
    (same timestamp), as the datagrams would cross a real wire, so Wireshark decrypts each; every other
    frame is kept byte for byte.  The file is replaced only when it held a train.  Without keys the
    cut is the SPI/sequence pattern alone: 8 octets that a wrong cut would have to match by chance."""
    p = Path(path)
    linktype, nano, records = read_capture(p)
    counts = SplitCounts()
    tmp = p.with_name(p.name + ".split")
    try:
        with tmp.open("wb") as f:
            w = PcapWriter(f, linktype, nano, counts)
            for rec in records:
                parts = split_coalesced(rec.data, rec.linktype) if rec.linktype == linktype else []
                if parts and rec.wirelen == len(rec.data):  # a frame cut by the snaplen is kept whole
                    counts.trains += 1
                    counts.datagrams += len(parts)
                    for part in parts:
                        w.write(rec, part, False)
                else:
                    w.write(rec, rec.data, True)
        if counts.trains:
            os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return counts
