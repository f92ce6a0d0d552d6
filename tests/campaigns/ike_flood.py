"""IKE_SA_INIT flooder for the resilience campaigns (run inside a flooder netns, root).

Sends valid IKE_SA_INIT requests (a real initiator's first message, from the IKE core, with the
proposals the target accepts) to DST:500 from many spoofed source addresses (a raw socket with our
own IP header), each with a fresh initiator SPI, for SECONDS at up to RATE packets/s; prints one
JSON line: packets sent, seconds, rate, distinct sources.

    python tests/campaigns/ike_flood.py --dst 192.0.2.6 --sources 198.18.0.0/15 --seconds 10 \\
        --rate 20000 --ike aes128gcm16-prfsha256-ecp256
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
import time

from ipsecemu.esp.framing import ip_checksum
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.settings import IkeSaConfig


def template(ike: str, dst: str) -> bytes:
    """The IKE_SA_INIT request a real initiator sends (SA, KE, Ni, NAT-D, ...)."""
    cfg = IkeSaConfig.simple("flood", "not-a-secret", "198.18.0.1", None, ike=ike, remote_addr=(dst, 500))
    ep = IkeEndpoint([cfg], ("198.18.0.1", 500))
    ep.initiate("flood", 0.0)
    return ep.datagrams_to_send(0.0)[0][0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dst", required=True)
    ap.add_argument("--sources", required=True, help="an IPv4 network to spoof source addresses from")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=20000, help="packets per second at most")
    ap.add_argument("--ike", default="aes128gcm16-prfsha256-ecp256")
    a = ap.parse_args(argv)
    msg = bytearray(template(a.ike, a.dst))
    net = ipaddress.IPv4Network(a.sources)
    base, size = int(net.network_address) + 1, net.num_addresses - 2
    dst = socket.inet_aton(a.dst)
    udp_len = 8 + len(msg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sent = blocked = 0
    t0 = time.monotonic()
    end = t0 + a.seconds
    batch = 64
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if sent > (now - t0) * a.rate:  # pace: never ahead of RATE
            time.sleep(0.001)
            continue
        for _ in range(batch):
            src = struct.pack(">I", base + sent % size)
            msg[0:8] = os.urandom(8)  # a fresh initiator SPI: a new half-open SA to the target
            ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, sent & 0xFFFF, 0, 64, 17, 0, src, dst))
            ip[10:12] = struct.pack(">H", ip_checksum(bytes(ip)))
            pkt = bytes(ip) + struct.pack(">HHHH", 500, 500, udp_len, 0) + msg  # UDP checksum 0: allowed on IPv4
            try:
                sock.sendto(pkt, (a.dst, 0))
                sent += 1
            except BlockingIOError:
                blocked += 1
    took = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": round(took, 3), "rate": round(sent / took), "blocked": blocked,
                      "sources": min(sent, size), "bytes": len(pkt)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
