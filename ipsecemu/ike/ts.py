"""Traffic selectors (RFC 7296 section 3.13.1) and narrowing (section 2.9)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .consts import TsType

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrafficSelector:
    start_addr: IpAddress
    end_addr: IpAddress
    ip_proto: int = 0  # 0 = any
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> int:
        return TsType.IPV4_ADDR_RANGE if self.start_addr.version == 4 else TsType.IPV6_ADDR_RANGE

    @classmethod
    def from_cidr(cls, cidr: str, ip_proto: int = 0, port: int | None = None) -> TrafficSelector:
        """``"10.0.0.0/24"`` (or a single address) -> selector; ``port`` limits to one port."""
        net = ipaddress.ip_network(cidr, strict=False)
        lo, hi = (0, 65535) if port is None else (port, port)
        return cls(net[0], net[-1], ip_proto, lo, hi)

    def intersect(self, other: TrafficSelector) -> TrafficSelector | None:
        if self.start_addr.version != other.start_addr.version:
            return None
        if self.ip_proto and other.ip_proto and self.ip_proto != other.ip_proto:
            return None
        lo, hi = max(self.start_addr, other.start_addr), min(self.end_addr, other.end_addr)
        plo, phi = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        if lo > hi or plo > phi:  # type: ignore[operator]  # same IP version: checked above
            return None
        return TrafficSelector(lo, hi, self.ip_proto or other.ip_proto, plo, phi)

    def __str__(self) -> str:
        try:
            nets = list(ipaddress.summarize_address_range(self.start_addr, self.end_addr))
            addr = ",".join(str(n) for n in nets) if len(nets) <= 2 else f"{self.start_addr}-{self.end_addr}"
        except (TypeError, ValueError):
            addr = f"{self.start_addr}-{self.end_addr}"
        extra = ""
        if self.ip_proto or (self.start_port, self.end_port) != (0, 65535):
            ports = str(self.start_port) if self.start_port == self.end_port else f"{self.start_port}-{self.end_port}"
            extra = f"[{self.ip_proto}/{ports}]"
        return addr + extra


def narrow(proposed: list[TrafficSelector], allowed: list[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing: every non-empty intersection of a proposed selector with an allowed one."""
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            i = p.intersect(a)
            if i is not None and i not in out:
                out.append(i)
    return out


def _port_protocol(proto: int) -> bool:
    return proto in (1, 6, 17, 58, 132, 136)  # ports, or ICMP type/code in the port field


def on_demand(local: list[TrafficSelector], remote: list[TrafficSelector], src: IpAddress, dst: IpAddress,
              proto: int, sport: int | None, dport: int | None) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
    """TSi/TSr of a Child SA triggered by a packet (RFC 7296 section 2.9): the packet's own
    selectors first (its addresses, protocol and ports: what the responder must keep if it
    narrows), then the configured ones.  ``sport``/``dport`` None: no ports (e.g. a fragment)."""

    def one(addr: IpAddress, port: int | None) -> TrafficSelector:
        lo, hi = (port, port) if port is not None and _port_protocol(proto) else (0, 65535)
        return TrafficSelector(addr, addr, proto, lo, hi)

    first_i, first_r = one(src, sport), one(dst, dport)
    return ([first_i, *(t for t in local if t != first_i)], [first_r, *(t for t in remote if t != first_r)])
