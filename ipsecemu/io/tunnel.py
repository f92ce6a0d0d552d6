"""A small tun <-> ESP-in-UDP forwarder for tests (Python per packet; the lab gateway daemon
replaces it for real traffic).

Packets the kernel routes into our tun (the remote traffic selectors are routed there) are
encrypted with the outbound SA whose remote TS covers the destination and sent from the
transport's NAT-T socket.  ESP arriving on the NAT-T socket is decrypted through the inbound SA
table; the inner packet is written to the tun if its addresses fit the SA's selectors.
Failures are counted per verdict, never raised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pyroute2 import IPRoute

from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.dataplane import backend as dataplane_backend
from ipsecemu.io.transport import Addr, IkeTransport
from ipsecemu.net.netns import netlink
from ipsecemu.net.tun import open_tun

log = logging.getLogger(__name__)

__all__ = ["TunForwarder", "networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(selectors: Iterable[Any]) -> list[Network]:
    """CIDR strings, networks, or IKE ``TrafficSelector`` objects (address ranges) -> networks."""
    out: list[Network] = []
    for ts in selectors:
        if hasattr(ts, "start_addr"):
            out += ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)
        else:
            out.append(ipaddress.ip_network(str(ts), strict=False))
    return out


@dataclass
class _Out:
    sa: Any  # backend EspOutbound
    cfg: EspSaConfig
    remote: Addr
    local_host: str | None
    remote_nets: list[Network]
    local_nets: list[Network]


@dataclass
class _In:
    cfg: EspSaConfig
    remote_nets: list[Network]
    local_nets: list[Network]


class TunForwarder:
    """tun ``name`` in ``netns`` <-> ESP over ``transport``'s NAT-T socket.

    Give ``transport.on_esp = forwarder.on_esp`` (done by the constructor).  Counters:
    ``tun_in``, ``encap_ok``, ``no_sa`` (no outbound SA for a destination), ``decap_ok``,
    ``ts_mismatch``, one ``decap_<verdict>`` per failed verdict, ``encap_<verdict>``.
    """

    def __init__(self, transport: IkeTransport, name: str, *, netns: str | None = None, mtu: int = 1400,
                 addresses: Sequence[str] = (), backend: str = "auto") -> None:
        self.transport = transport
        self.name = name
        self.netns = netns
        self.mtu = mtu
        self.addresses = list(addresses)
        self.dp: ModuleType = dataplane_backend(backend)
        self.inbound = self.dp.EspInboundTable()
        self._in: dict[int, _In] = {}
        self._out: list[_Out] = []  # newest first: a rekeyed SA takes over before the old is deleted
        self._routes: set[Network] = set()
        self.counters: Counter[str] = Counter()
        self.fd: int | None = None
        transport.on_esp = self.on_esp

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> TunForwarder:
        self.fd = open_tun(self.name, netns=self.netns)

        def setup(ipr: IPRoute) -> None:
            idx = ipr.link_lookup(ifname=self.name)[0]
            ipr.link("set", index=idx, mtu=self.mtu, state="up")
            for cidr in self.addresses:
                iface = ipaddress.ip_interface(cidr)
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)

        try:
            netlink(self.netns, setup)
        except BaseException:
            self.close()
            raise
        asyncio.get_running_loop().add_reader(self.fd, self._on_tun)
        return self

    def close(self) -> None:
        if self.fd is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.fd)
            except RuntimeError:
                pass  # loop already gone
            os.close(self.fd)  # closing the last fd deletes the tun and its routes
            self.fd = None

    def __enter__(self) -> TunForwarder:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- SAs ---------------------------------------------------------------------------
    def install(self, inbound: EspSaConfig, outbound: EspSaConfig, remote: Addr, remote_ts: Iterable[Any],
                local_ts: Iterable[Any] = ("0.0.0.0/0", "::/0"), *, local_host: str | None = None,
                route: bool = True) -> None:
        """Add one CHILD_SA (both directions) and route its remote selectors into the tun."""
        rnets, lnets = networks(remote_ts), networks(local_ts)
        self.inbound.add(inbound)
        self._in[inbound.spi] = _In(inbound, rnets, lnets)
        self._out.insert(0, _Out(self.dp.EspOutbound(outbound), outbound, remote, local_host, rnets, lnets))
        if route:
            self._add_routes(rnets)

    def remove(self, inbound_spi: int | None = None, outbound_spi: int | None = None) -> None:
        if inbound_spi is not None and inbound_spi in self._in:
            self.inbound.remove(inbound_spi)
            del self._in[inbound_spi]
        if outbound_spi is not None:
            self._out = [o for o in self._out if o.cfg.spi != outbound_spi]

    def outbound_counters(self, spi: int) -> Any:
        return next(o.sa.counters for o in self._out if o.cfg.spi == spi)

    def _add_routes(self, nets: list[Network]) -> None:
        new = [n for n in nets if n not in self._routes]
        if not new:
            return

        def add(ipr: IPRoute) -> None:
            idx = ipr.link_lookup(ifname=self.name)[0]
            for net in new:
                ipr.route("replace", dst=str(net), oif=idx)

        netlink(self.netns, add)
        self._routes.update(new)

    # -- data path ---------------------------------------------------------------------
    def _on_tun(self) -> None:
        assert self.fd is not None
        for _ in range(64):  # bounded batch per wakeup so IKE is not starved
            try:
                pkt = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self.counters["tun_error"] += 1
                log.debug("tun read: %s", exc)
                return
            self.counters["tun_in"] += 1
            self._encap(pkt)

    def _encap(self, pkt: bytes) -> None:
        version = pkt[0] >> 4 if pkt else 0
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address
        if version == 4 and len(pkt) >= 20:
            dst, nh = ipaddress.IPv4Address(pkt[16:20]), 4
        elif version == 6 and len(pkt) >= 40:
            dst, nh = ipaddress.IPv6Address(pkt[24:40]), 41
        else:
            self.counters["tun_malformed"] += 1
            return
        out = next((o for o in self._out if any(dst in n for n in o.remote_nets)), None)
        if out is None:
            self.counters["no_sa"] += 1
            return
        verdict, esp = out.sa.encap(pkt, nh)
        if verdict != Verdict.OK:
            self.counters[f"encap_{Verdict(verdict).name.lower()}"] += 1
            return
        self.counters["encap_ok"] += 1
        self.transport.send_esp(esp, out.remote, out.local_host)

    def on_esp(self, esp: bytes, remote: Addr, local: Addr) -> None:
        res = self.inbound.decap(esp)
        if res.verdict != Verdict.OK:
            self.counters[f"decap_{Verdict(res.verdict).name.lower()}"] += 1
            return
        inner = res.payload
        sa = self._in.get(res.spi)
        if sa is not None and not self._fits(inner, sa):
            self.counters["ts_mismatch"] += 1
            return
        self.counters["decap_ok"] += 1
        if self.fd is not None:
            try:
                os.write(self.fd, inner)
            except OSError as exc:
                self.counters["tun_error"] += 1
                log.debug("tun write: %s", exc)

    @staticmethod
    def _fits(inner: bytes, sa: _In) -> bool:
        """Inner source in the remote TS and destination in the local TS (RFC 4301 5.2)."""
        src: ipaddress.IPv4Address | ipaddress.IPv6Address
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address
        try:
            if inner[0] >> 4 == 4:
                src, dst = ipaddress.IPv4Address(inner[12:16]), ipaddress.IPv4Address(inner[16:20])
            else:
                src, dst = ipaddress.IPv6Address(inner[8:24]), ipaddress.IPv6Address(inner[24:40])
        except (IndexError, ipaddress.AddressValueError):
            return False
        return any(src in n for n in sa.remote_nets) and any(dst in n for n in sa.local_nets)
