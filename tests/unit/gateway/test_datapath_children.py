"""Several Child SAs in one connection's data path (no root: tun and netlink stubbed, reference
backend, slow path): each child keeps its routes while it lives, a rekey stays in its child
(make-before-break per child), each packet leaves on the SA of the child whose selectors hold
it, and a decapsulated packet outside its SA's selectors is a counted drop."""

from __future__ import annotations

import asyncio
import os
import struct
import types
from typing import Any

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.config.connection import SaLifetime
from ipsecemu.config.gateway import TunnelConfig
from ipsecemu.dataplane import reference
from ipsecemu.gateway import datapath as dpm
from ipsecemu.gateway.datapath import ConnectionDatapath
from ipsecemu.ike.events import ChildSaKeys
from ipsecemu.ike.ts import TrafficSelector

TS = TrafficSelector.from_cidr
PEER = ("192.0.2.2", 4500)


def keys(n: int, remote: str, *, local: str = "10.1.0.0/24") -> ChildSaKeys:
    def cfg(spi: int) -> EspSaConfig:
        return EspSaConfig(spi=spi, encr="aes-gcm-16", enc_key=spi.to_bytes(4, "big") * 5)

    return ChildSaKeys(inbound=cfg(0x1000 + n), outbound=cfg(0x2000 + n), local_ts=(TS(local),),
                       remote_ts=(TS(remote),), mode="tunnel", encap=True, local=("192.0.2.1", 4500), remote=PEER,
                       lifetime_s=3600.0, proposal="aes128gcm16")


def ipv4(src: str, dst: str, proto: int = 1) -> bytes:
    body = b"\x08\x00" + bytes(10)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + body


class _Os:
    """``os`` for the data path: the tun is a queue of packets; writes to it are collected."""

    def __init__(self, tun_fd: int) -> None:
        self.tun_fd = tun_fd
        self.queue: list[bytes] = []
        self.delivered: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def read(self, fd: int, n: int) -> bytes:
        if fd != self.tun_fd:
            return os.read(fd, n)
        if not self.queue:
            raise BlockingIOError
        return self.queue.pop(0)

    def write(self, fd: int, data: bytes) -> int:
        if fd != self.tun_fd:
            return os.write(fd, data)
        self.delivered.append(bytes(data))
        return len(data)


class Harness:
    """A ConnectionDatapath with a pipe for a tun (packets queued in _Os), routes recorded
    instead of set, and the slow path's sends captured."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        conn = types.SimpleNamespace(child_lifetime=SaLifetime(3600), start_action="initiate")
        gw: Any = types.SimpleNamespace(name="pair", tunnel=TunnelConfig("mct0"), conn=conn)
        self.dp = ConnectionDatapath(gw, backend="reference")
        self.sent: list[bytes] = []
        self.tun_r, self.tun_w = os.pipe()
        self.dp.tun_fd = self.tun_r
        self.os = _Os(self.tun_r)
        self.delivered = self.os.delivered
        monkeypatch.setattr(dpm, "os", self.os)
        monkeypatch.setattr(dpm, "netlink", lambda _ns, _fn: None)  # routes: the view is self.dp.routes
        self.port = dpm.Port(fd=-1, pause=lambda: None, resume=lambda: None,
                             send=lambda esp, _addr: self.sent.append(esp), close=lambda: None)

    def routes(self) -> set[str]:
        return {str(n) for n in self.dp.routes}

    def send(self, pkt: bytes) -> None:
        """A packet the kernel routed into the tun, through the slow path."""
        self.os.queue.append(pkt)
        self.dp._on_tun()

    def close(self) -> None:
        os.close(self.tun_r)
        os.close(self.tun_w)


def run(coro_fn: Any) -> None:
    async def main() -> None:
        coro_fn()
    asyncio.run(main())


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Any:
    hh = Harness(monkeypatch)
    yield hh
    hh.dp._stop_slow()
    hh.close()


def test_second_child_keeps_the_first_childs_routes_and_each_packet_its_own_sa(h: Harness) -> None:
    def body() -> None:
        dp = h.dp
        dp.install(keys(1, "10.2.0.0/24"), 0.0, h.port)
        dp.install(keys(2, "10.3.0.0/24"), 0.0, h.port)
        assert h.routes() == {"10.2.0.0/24", "10.3.0.0/24"}
        assert [c["child"] for c in dp.policies()] == [1, 2]
        h.send(ipv4("10.1.0.2", "10.2.0.2"))
        h.send(ipv4("10.1.0.2", "10.3.0.2"))
        h.send(ipv4("10.1.0.2", "10.4.0.2"))  # no child covers it
        h.send(ipv4("10.9.0.2", "10.3.0.2"))  # source outside our selectors
        assert [int.from_bytes(e[:4], "big") for e in h.sent] == [0x2001, 0x2002]
        assert dp.slow_counters["no_policy"] == 2
        # removing child 1 takes only its route; child 2 keeps carrying its traffic
        dp.remove(0x1001)
        assert h.routes() == {"10.3.0.0/24"}
        h.send(ipv4("10.1.0.2", "10.3.0.2"))
        h.send(ipv4("10.1.0.2", "10.2.0.2"))
        assert [int.from_bytes(e[:4], "big") for e in h.sent][2:] == [0x2002]
        dp.remove(0x1002)
        assert h.routes() == set() and dp.mode == "idle"
    run(body)


def test_rekey_stays_in_its_child(h: Harness) -> None:
    def body() -> None:
        dp = h.dp
        dp.install(keys(1, "10.2.0.0/24"), 0.0, h.port)
        dp.install(keys(2, "10.3.0.0/24"), 0.0, h.port)
        # the peer rekeys child 1: the new SA waits (make-before-break) in child 1 only
        dp.install(keys(3, "10.2.0.0/24"), 1.0, h.port, rekey=True, old_inbound_spi=0x1001)
        assert dp.lineage_of(0x1003) == 1 and dp.children[0x1003].pending
        h.send(ipv4("10.1.0.2", "10.2.0.2"))
        h.send(ipv4("10.1.0.2", "10.3.0.2"))
        assert [int.from_bytes(e[:4], "big") for e in h.sent] == [0x2001, 0x2002]
        dp.remove(0x1001)  # the peer deletes the old SA: child 1 moves to its new SA
        assert h.routes() == {"10.2.0.0/24", "10.3.0.0/24"}
        h.send(ipv4("10.1.0.2", "10.2.0.2"))
        h.send(ipv4("10.1.0.2", "10.3.0.2"))
        assert [int.from_bytes(e[:4], "big") for e in h.sent][2:] == [0x2003, 0x2002]
        # a rekey we start moves the outbound at once, still in its child
        dp.install(keys(4, "10.3.0.0/24"), 2.0, h.port, rekey=True, we_started=True, old_inbound_spi=0x1002)
        h.send(ipv4("10.1.0.2", "10.3.0.2"))
        assert int.from_bytes(h.sent[-1][:4], "big") == 0x2004 and dp.lineage_of(0x1004) == 2
        # a new child after a rekey gets the next free number
        dp.install(keys(5, "10.5.0.0/24"), 3.0, h.port)
        assert dp.lineage_of(0x1005) == 3
    run(body)


def test_inbound_outside_the_sas_selectors_is_a_counted_drop(h: Harness) -> None:
    def body() -> None:
        dp = h.dp
        k1, k2 = keys(1, "10.2.0.0/24"), keys(2, "10.3.0.0/24")
        dp.install(k1, 0.0, h.port)
        dp.install(k2, 0.0, h.port)
        peer1 = reference.EspOutbound(k1.inbound)  # the peer's side: it sends on our inbound SA of child 1
        for src in ("10.2.0.2", "10.3.0.2"):  # the second one belongs to child 2, not to this SA
            verdict, esp = peer1.encap(ipv4(src, "10.1.0.2"), 4)
            dp.slow_input(esp)
        assert dp.slow_counters == {"esp_ok": 1, "ts_drop": 1}
        assert len(h.delivered) == 1 and h.delivered[0][12:16] == bytes([10, 2, 0, 2])
    run(body)
