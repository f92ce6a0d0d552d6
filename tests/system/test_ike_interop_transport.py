"""The asyncio IKE transport and the tun forwarder, without the IKE core: RFC 3948 demux on
4500 over IPv4 and IPv6 between two netns, timer re-arming, and a ping through two tun
forwarders with static keys (ESP-in-UDP on the wire, checked by tcpdump/scapy)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.ike.ts import TrafficSelector
from ipsecemu.io.transport import IkeTransport, open_udp_socket
from ipsecemu.io.tunnel import TunForwarder, networks
from ipsecemu.lab.netns import Netns, capture, entered


class Recorder:
    """A stand-in for the IKE core that records what the transport hands it and sends what a
    test queues.  (It drives nothing; the interop tests use the real core.)"""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int], tuple[str, int] | None]] = []
        self.outbox: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.timer: float | None = None
        self.timer_calls: list[float] = []

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float,
                         local: tuple[str, int] | None = None) -> None:
        self.got.append((data, addr, local))

    def datagrams_to_send(self, now: float) -> list:
        out, self.outbox = self.outbox, []
        return out

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        self.timer = None

    def next_event(self) -> None:
        return None


def test_transport_rejects_bad_host() -> None:
    with pytest.raises(ValueError):
        IkeTransport(Recorder(), ["not-an-address"])
    with pytest.raises(ValueError):
        IkeTransport(Recorder(), [])


def test_networks_from_strings_and_ranges() -> None:
    nets = networks(["10.1.0.0/24", TrafficSelector.from_cidr("10.2.0.0/23")])
    assert [str(n) for n in nets] == ["10.1.0.0/24", "10.2.0.0/23"]


@pytest.fixture
def pair(unique_name: str):
    with Netns() as lab:
        a, b = lab.add(unique_name + "a", ipv6=True), lab.add(unique_name + "b", ipv6=True)
        lab.veth(a, unique_name + "a0", b, unique_name + "b0", ("192.0.2.1/24", "2001:db8::1/64"),
                 ("192.0.2.2/24", "2001:db8::2/64"))
        yield lab, a, b


@pytest.mark.root
@pytest.mark.parametrize("fam", ["v4", "v6"])
def test_nat_t_demux_and_marker(pair, fam: str) -> None:
    _lab, a, b = pair
    ha, hb = ("192.0.2.1", "192.0.2.2") if fam == "v4" else ("2001:db8::1", "2001:db8::2")

    async def main() -> None:
        rec = Recorder()
        esp_seen: list[tuple[bytes, tuple, tuple]] = []
        tr = IkeTransport(rec, [ha], netns=a, on_esp=lambda e, r, loc: esp_seen.append((e, r, loc)))
        await tr.start()
        peer = open_udp_socket(hb, 4500, b)
        peer500 = open_udp_socket(hb, 500, b)
        loop = asyncio.get_running_loop()
        try:
            ike = b"\x11" * 28  # anything: the transport does not parse IKE
            esp = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + os.urandom(40)
            for dgram in (b"\xff", b"\x00\x00\x00\x00" + ike, esp, b"\x01\x02"):
                await loop.sock_sendto(peer, dgram, (ha, 4500))
            await loop.sock_sendto(peer500, ike, (ha, 500))
            for _ in range(100):
                if len(rec.got) == 2 and esp_seen and tr.counters["short"]:
                    break
                await asyncio.sleep(0.01)
            assert tr.counters["keepalive_in"] == 1 and tr.counters["short"] == 1
            assert sorted((d, r[1], loc[1]) for d, r, loc in rec.got) == [(ike, 500, 500), (ike, 4500, 4500)]
            assert esp_seen == [(esp, (hb, 4500), (ha, 4500))]
            # output: from 4500 with the marker, from 500 without; the timer fires once
            rec.outbox = [(ike, (hb, 4500), (ha, 4500)), (ike, (hb, 500), (ha, 500))]
            rec.timer = tr.now() + 0.05
            tr.pump()
            got4500 = await asyncio.wait_for(loop.sock_recv(peer, 2048), 2)
            got500 = await asyncio.wait_for(loop.sock_recv(peer500, 2048), 2)
            assert got4500 == b"\x00\x00\x00\x00" + ike and got500 == ike
            await asyncio.sleep(0.15)
            assert len(rec.timer_calls) == 1
            tr.send_esp(esp, (hb, 4500))
            assert await asyncio.wait_for(loop.sock_recv(peer, 2048), 2) == esp
        finally:
            tr.close()
            peer.close()
            peer500.close()

    asyncio.run(main())


@pytest.mark.root
def test_sockets_live_in_their_netns(pair) -> None:
    _lab, a, _b = pair
    # 192.0.2.1 exists only in netns a: binding it here would fail, inside it succeeds
    with pytest.raises(OSError):
        socket.socket().bind(("192.0.2.1", 0))
    s = open_udp_socket("192.0.2.1", 0, a)
    s.close()
    with entered(a):
        assert Path("/proc/self/net/dev").read_text().count(":") >= 2


def _sa(spi: int, key: bytes) -> EspSaConfig:
    return EspSaConfig(spi=spi, encr="aes-gcm-16", enc_key=key)


@pytest.mark.root
def test_ping_through_two_tun_forwarders(pair, unique_name: str, tmp_path: Path) -> None:
    """Static keys, ESP-in-UDP between two forwarders in two netns; ping passes both ways."""
    _lab, a, b = pair
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    pcap = tmp_path / "wire.pcap"

    async def main() -> tuple[int, dict, dict]:
        ta = await IkeTransport(Recorder(), ["192.0.2.1"], netns=a).start()
        tb = await IkeTransport(Recorder(), ["192.0.2.2"], netns=b).start()
        fa = TunForwarder(ta, unique_name + "ta", netns=a, addresses=["10.1.0.1/32"]).open()
        fb = TunForwarder(tb, unique_name + "tb", netns=b, addresses=["10.2.0.1/32"]).open()
        try:
            fa.install(_sa(0x2001, k_ba), _sa(0x1001, k_ab), ("192.0.2.2", 4500), ["10.2.0.0/24"], ["10.1.0.0/24"])
            fb.install(_sa(0x1001, k_ab), _sa(0x2001, k_ba), ("192.0.2.1", 4500), ["10.1.0.0/24"], ["10.2.0.0/24"])
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", a, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-s", "1000",
                "10.2.0.1", stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
            got = int(out.decode().split(" received")[0].rsplit(" ", 1)[-1])
            return got, dict(fa.counters), dict(fb.counters)
        finally:
            fa.close()
            fb.close()
            ta.close()
            tb.close()

    with capture(a, unique_name + "a0", pcap, "udp"):
        got, ca, cb = asyncio.run(main())
    assert got == 3, (ca, cb)
    assert ca["encap_ok"] == 3 and ca["decap_ok"] == 3 and cb["decap_ok"] == 3 and cb["encap_ok"] == 3
    # independent view of the wire: scapy sees ESP-in-UDP 4500<->4500 with our SPIs, never plain ICMP
    from scapy.all import ICMP, UDP, rdpcap

    pkts = rdpcap(str(pcap))
    udp = [p[UDP] for p in pkts if UDP in p]
    assert not any(ICMP in p for p in pkts)
    spis = sorted({int.from_bytes(bytes(u.payload)[:4], "big") for u in udp if u.sport == u.dport == 4500})
    assert spis == [0x1001, 0x2001]
    assert len(udp) == 6 and all(len(u) > 1000 for u in udp)
