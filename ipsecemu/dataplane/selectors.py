"""Traffic selectors applied to inner packets (RFC 7296 section 3.13.1, RFC 4301 section 4.4.1):
which Child SA a packet leaves on, and whether a decapsulated packet fits the SA it came in on.

The Python twin of ``native/src/loop_policy.c``: the slow path uses it per packet, the tests use
it as the oracle of the C lookup.  A selector is anything with ``start_addr``/``end_addr``
(ipaddress objects), ``ip_proto`` (0: any) and ``start_port``/``end_port`` -- the IKE core's
``TrafficSelector``.  ICMP type/code ride in the port field as ``type << 8 | code``; a later
IP fragment has no ports (OPAQUE), so only "any port" selectors match it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PacketSelectors", "Selector", "fits_inbound", "fits_outbound", "packet_selectors", "pick_outbound"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_PORT_PROTOS = (6, 17, 132, 136)  # TCP, UDP, SCTP, UDP-Lite
_ICMP_PROTOS = (1, 58)
_EXT = (0, 43, 60)  # IPv6 hop-by-hop, routing, destination options


class Selector(Protocol):
    @property
    def start_addr(self) -> IpAddress: ...
    @property
    def end_addr(self) -> IpAddress: ...
    @property
    def ip_proto(self) -> int: ...
    @property
    def start_port(self) -> int: ...
    @property
    def end_port(self) -> int: ...


@dataclass(frozen=True)
class PacketSelectors:
    src: IpAddress
    dst: IpAddress
    proto: int
    sport: int | None  # None: no ports (later fragment, truncated, a protocol without ports)
    dport: int | None


def packet_selectors(pkt: bytes) -> PacketSelectors | None:
    """The selector fields of an IP packet, or None if it is not one we can read."""
    if len(pkt) < 20:
        return None
    version = pkt[0] >> 4
    src: IpAddress
    dst: IpAddress
    if version == 4:
        ihl = (pkt[0] & 15) * 4
        if ihl < 20 or ihl > len(pkt):
            return None
        proto, later = pkt[9], ((pkt[6] & 0x1F) << 8 | pkt[7]) != 0
        src, dst, off = ipaddress.IPv4Address(pkt[12:16]), ipaddress.IPv4Address(pkt[16:20]), ihl
    elif version == 6:
        if len(pkt) < 40:
            return None
        src, dst = ipaddress.IPv6Address(pkt[8:24]), ipaddress.IPv6Address(pkt[24:40])
        proto, off, later = pkt[6], 40, False
        for _ in range(8):
            if proto not in _EXT and proto != 44:
                break
            if off + 8 > len(pkt):
                return None
            if proto == 44:
                later = ((pkt[off + 2] << 8 | pkt[off + 3]) & 0xFFF8) != 0
                proto, off = pkt[off], off + 8
            else:
                proto, off = pkt[off], off + (pkt[off + 1] + 1) * 8
    else:
        return None
    sport = dport = None
    if not later:
        if proto in _PORT_PROTOS and off + 4 <= len(pkt):
            sport, dport = int.from_bytes(pkt[off:off + 2], "big"), int.from_bytes(pkt[off + 2:off + 4], "big")
        elif proto in _ICMP_PROTOS and off + 2 <= len(pkt):
            sport = dport = int.from_bytes(pkt[off:off + 2], "big")
    return PacketSelectors(src, dst, proto, sport, dport)


def _match(ts: Selector, addr: IpAddress, proto: int, port: int | None) -> bool:
    if ts.start_addr.version != addr.version or (ts.ip_proto and ts.ip_proto != proto):
        return False
    if not ts.start_addr <= addr <= ts.end_addr:  # type: ignore[operator]  # same version: checked
        return False
    if (ts.start_port, ts.end_port) == (0, 65535):
        return True
    return port is not None and ts.start_port <= port <= ts.end_port


def _any(sels: Sequence[Selector], addr: IpAddress, proto: int, port: int | None) -> bool:
    return any(_match(t, addr, proto, port) for t in sels)


def fits_outbound(p: PacketSelectors, local: Sequence[Selector], remote: Sequence[Selector]) -> bool:
    """A packet we send: source in our selectors, destination in the peer's."""
    return _any(local, p.src, p.proto, p.sport) and _any(remote, p.dst, p.proto, p.dport)


def fits_inbound(p: PacketSelectors, local: Sequence[Selector], remote: Sequence[Selector]) -> bool:
    """A packet the peer sent: source in the peer's selectors, destination in ours."""
    return _any(remote, p.src, p.proto, p.sport) and _any(local, p.dst, p.proto, p.dport)


def pick_outbound(pkt: bytes, policies: Sequence[tuple[Sequence[Selector], Sequence[Selector]]]) -> int | None:
    """Index of the first (local, remote) policy the packet fits, or None (as the C lookup)."""
    p = packet_selectors(pkt)
    if p is None:
        return None
    for i, (local, remote) in enumerate(policies):
        if fits_outbound(p, local, remote):
            return i
    return None
