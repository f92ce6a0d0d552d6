"""An on-demand (trap) connection's data path without root (tun and netlink stubbed, reference
backend, slow path): routes before any SA, a packet inside the selectors queued and reported, one
outside them (another port) a counted drop that never triggers, the queue flushed through the
first SA in order, the port selector enforced once the SA is up, the trap re-armed when the SA
goes, and the clear fallback taking the routes away until the next SA."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.config.connection import parse_ts
from ipsecemu.config.gateway import loads
from ipsecemu.dataplane import reference
from ipsecemu.dataplane.selectors import PacketSelectors
from ipsecemu.gateway import datapath as dpm
from ipsecemu.gateway.datapath import ConnectionDatapath
from ipsecemu.ike.events import ChildSaKeys

H1, VM1 = "10.2.27.4", "10.0.1.4"
CONFIG = f"""\
node: host1
connections:
  to-vm1:
    local_address: {H1}
    remote_address: {VM1}
    psk: s5-secret
    mode: transport
    local_ts: ["{H1}/32[tcp]"]
    remote_ts: ["{VM1}/32[tcp/8080]"]
    start_action: trap
    tunnel: {{name: trap0, table: 108}}
"""


def tcp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0, 64, 6, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + seg


def sa(spi: int) -> EspSaConfig:
    return EspSaConfig(spi=spi, encr="aes-gcm-16", enc_key=spi.to_bytes(4, "big") * 5, mode="transport")


def keys(n: int) -> ChildSaKeys:
    return ChildSaKeys(inbound=sa(0x1000 + n), outbound=sa(0x2000 + n),
                       local_ts=(parse_ts(f"{H1}/32[tcp/40001]"), parse_ts(f"{H1}/32[tcp]")),
                       remote_ts=(parse_ts(f"{VM1}/32[tcp/8080]"),), mode="transport", encap=True,
                       local=(H1, 4500), remote=(VM1, 4500), lifetime_s=3600.0, proposal="aes128gcm16")


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        (gw,) = loads(CONFIG).connections
        self.dp = ConnectionDatapath(gw, backend="reference")
        self.tun_r, self.tun_w = os.pipe()
        self.dp.tun_fd = self.tun_r
        self.queue: list[bytes] = []
        real = os

        class _Os:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def read(_self, fd: int, n: int) -> bytes:  # noqa: N805 - a stand-in for os
                if fd != self.tun_r:
                    return real.read(fd, n)
                if not self.queue:
                    raise BlockingIOError
                return self.queue.pop(0)

        monkeypatch.setattr(dpm, "os", _Os())
        self.route_calls: list[tuple[str, dict[str, Any]]] = []
        monkeypatch.setattr(dpm, "netlink", lambda _ns, fn: fn(self))  # this object plays pyroute2's IPRoute
        self.sent: list[bytes] = []
        self.port = dpm.Port(fd=-1, pause=lambda: None, resume=lambda: None,
                             send=lambda esp, _addr: self.sent.append(esp), close=lambda: None)
        self.triggers: list[PacketSelectors] = []
        self.dp.on_trigger = self.triggers.append

    # the two pyroute2 calls _set_routes makes
    def link_lookup(self, ifname: str) -> list[int]:
        return [7]

    def route(self, op: str, **kw: Any) -> None:
        self.route_calls.append((op, kw))

    def routes(self) -> set[str]:
        return {str(n) for n in self.dp.routes}

    def send(self, pkt: bytes) -> None:
        self.queue.append(pkt)
        self.dp._on_tun()

    def close(self) -> None:
        self.dp._stop_slow()
        os.close(self.tun_r)
        os.close(self.tun_w)


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Any:
    hh = Harness(monkeypatch)
    yield hh
    hh.close()


def run(fn: Any) -> None:
    async def main() -> None:
        fn()
    asyncio.run(main())


def decrypt(cfg: EspSaConfig, esp: bytes) -> tuple[int, bytes]:
    table = reference.EspInboundTable()
    table.add(cfg)
    res = table.decap(esp)
    return res.next_header, bytes(res.payload)


def test_trap_queues_triggers_flushes_and_rearms(h: Harness) -> None:
    def body() -> None:
        dp = h.dp
        dp.arm_trap()
        # the peer's host route, in the connection's table, our address as source, before any SA
        assert h.routes() == {f"{VM1}/32"}
        assert h.route_calls == [("replace", {"dst": f"{VM1}/32", "oif": 7, "table": 108, "prefsrc": H1})]
        syn = tcp(H1, VM1, 40001, 8080)
        h.send(syn)
        h.send(tcp(H1, VM1, 40001, 8080, b"retransmit"))
        h.send(tcp(H1, VM1, 40002, 80))  # another port: outside the selectors, never triggers
        assert [(str(p.dst), p.dport) for p in h.triggers] == [(VM1, 8080), (VM1, 8080)]
        assert dp.trap is not None and len(dp.trap) == 2 and dp.slow_counters == {"trap_no_policy": 1}
        assert h.sent == []  # nothing leaves before the SA
        k = keys(1)
        dp.install(k, 0.0, h.port)
        # the queue went first, in order, through the SA: transport framing (next header 6)
        assert len(h.sent) == 2 and dp.trap.view()["flushed"] == 2
        nh, data = decrypt(k.outbound, h.sent[0])
        assert nh == 6 and data == syn[20:]
        assert decrypt(k.outbound, h.sent[1])[1].endswith(b"retransmit")
        # the SA is up: the port selector still holds on the data path
        h.send(tcp(H1, VM1, 40002, 80))
        h.send(tcp(H1, VM1, 40003, 8080))
        assert len(h.sent) == 3 and dp.slow_counters["no_policy"] == 1
        assert len(h.triggers) == 2  # packets with an SA trigger nothing
        # the SA goes: the routes stay (drop), the tun is read by the trap again
        dp.remove(k.inbound.spi)
        assert h.routes() == {f"{VM1}/32"} and dp.mode == "idle"
        h.send(syn)
        assert len(h.triggers) == 3 and len(dp.trap) == 1 and len(h.sent) == 3
    run(body)


def test_clear_fallback_removes_the_routes_until_the_next_sa(h: Harness) -> None:
    def body() -> None:
        dp = h.dp
        dp.arm_trap()
        h.send(tcp(H1, VM1, 40001, 8080))
        dp.trap_release("peer 10.0.1.4 did not answer")
        assert h.routes() == set() and dp.trap_released and dp.trap is not None and len(dp.trap) == 0
        assert h.route_calls[-1] == ("del", {"dst": f"{VM1}/32", "oif": 7, "table": 108})
        h.send(tcp(H1, VM1, 40001, 8080))  # a straggler still routed here: dropped, counted, no trigger
        assert dp.slow_counters["trap_released_drop"] == 1 and len(h.triggers) == 1
        dp.install(keys(1), 0.0, h.port)  # a retry brought an SA: the routes are back
        assert h.routes() == {f"{VM1}/32"} and not dp.trap_released
        dp.remove(0x1001)
        assert h.routes() == {f"{VM1}/32"}  # armed again
    run(body)
