"""ESP-in-UDP datagrams merged by receive-side UDP GRO, cut apart again.

tcpdump on the receiving end of a veth sees the GRO train as one IPv4/UDP packet whose payload is
several ESP datagrams of one SA back to back; decrypted as one ESP packet it fails its ICV.  Both
``pcap decrypt`` (:mod:`ipsecemu.pcap.decrypt`) and ``lab audit`` split such a frame here first.
"""

from __future__ import annotations

import struct

__all__ = ["split_coalesced"]


def split_coalesced(frame: bytes) -> list[bytes]:
    """An Ethernet/IPv4 frame whose UDP 4500 payload is several ESP datagrams of one SA glued together
    (tcpdump on the receiving end of a veth sees UDP GRO's merged packet) -> one frame per datagram,
    cut where the SPI comes back with the next sequence number; [] when the frame is not like that."""
    off = 14
    if len(frame) < off + 28 or frame[12:14] != b"\x08\x00" or frame[off] >> 4 != 4 or frame[off + 9] != 17:
        return []
    ihl = (frame[off] & 0x0F) * 4
    udp = frame[off + ihl:]
    payload = udp[8:]
    if 4500 not in struct.unpack("!HH", udp[:4]) or len(payload) < 16 or payload[:4] == b"\0\0\0\0":
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
    ip_hdr = bytearray(frame[off:off + ihl])
    for a, b in zip(cuts, [*cuts[1:], len(payload)], strict=True):
        seg = payload[a:b]
        struct.pack_into("!H", ip_hdr, 2, ihl + 8 + len(seg))
        udp_hdr = udp[:4] + struct.pack("!HH", 8 + len(seg), 0)  # checksum 0: not checked for IPv4
        out.append(frame[:off] + bytes(ip_hdr) + udp_hdr + seg)
    return out
