"""Several Child SAs in one C gateway loop (outbound SA chosen by traffic selectors, inbound
packets checked against their SA's selectors): the C lookup agrees with the Python one
(``dataplane.selectors``) on random selectors and packets, and two loops in namespaces carry
pings of two children each on its own SA, dropping (and counting) what no child covers and
what arrives outside its SA's selectors.  Needs root (tun devices)."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.dataplane.selectors import fits_inbound, packet_selectors, pick_outbound
from ipsecemu.ike.ts import TrafficSelector
from ipsecemu.net.tun import open_tun

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
gateway_loop = pytest.importorskip("ipsecemu.dataplane.native.gateway_loop")

pytestmark = pytest.mark.root

TS = TrafficSelector.from_cidr


def sa(spi: int) -> EspSaConfig:
    return EspSaConfig(spi=spi, encr="aes-gcm-16", enc_key=spi.to_bytes(4, "big") * 5)


def ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


class Node:
    """A netns with a tun (fd kept here), a few addresses on it and routes into it."""

    def __init__(self, name: str, addrs: list[str], routes: list[str]) -> None:
        self.ns, self.tun = name, name + "t"
        ip("netns", "add", self.ns)
        # no IPv6 router solicitations / MLD from the tun: every packet read is one of ours
        subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True, capture_output=True, timeout=10)
        self.fd = open_tun(self.tun, blocking=True)
        ip("link", "set", self.tun, "netns", self.ns)
        for a in addrs:
            ip("addr", "add", f"{a}/32", "dev", self.tun, ns=self.ns)
        ip("link", "set", self.tun, "up", ns=self.ns)
        for r in routes:
            ip("route", "add", r, "dev", self.tun, ns=self.ns)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]

    def close(self) -> None:
        self.udp.close()
        os.close(self.fd)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


@pytest.fixture
def pair(unique_name: str) -> Iterator[tuple[Node, Node]]:
    made: list[Node] = []
    base = "mc" + unique_name[1:]
    try:
        made.append(Node(base + "a", ["10.1.0.1"], ["10.2.0.0/24"]))
        made.append(Node(base + "b", ["10.2.0.1", "10.2.0.129"], ["10.1.0.0/24"]))
        yield made[0], made[1]
    finally:
        for n in made:
            n.close()


def ping(ns: str, dst: str, src: str | None = None, count: int = 3) -> int:
    cmd = ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    if src:
        cmd[6:6] = ["-I", src]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return sum(1 for line in res.stdout.splitlines() if "bytes from" in line)


# -- the lookup, C against Python ------------------------------------------------------------

def _rand_ts(rng: random.Random, v6: bool) -> TrafficSelector:
    bits = 128 if v6 else 32
    base = 0x20010DB8 << 96 if v6 else 0x0A000000
    plen = rng.choice([bits - 8, bits - 4, bits - 1, bits]) if rng.random() < 0.8 else rng.randint(0, bits)
    addr = base + rng.randrange(0, 1024)
    cls = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
    net = cls((addr >> (bits - plen) << (bits - plen), plen))
    proto = rng.choice([0, 0, 6, 17, 1, 58])
    lo, hi = (0, 65535) if rng.random() < 0.6 else sorted((rng.randrange(65536), rng.randrange(65536)))
    return TrafficSelector(net[0], net[-1], proto, lo, hi)


def _rand_pkt(rng: random.Random, v6: bool) -> bytes:
    proto = rng.choice([6, 17, 1, 58, 47, 132])
    base = 0x20010DB8 << 96 if v6 else 0x0A000000
    src, dst = base + rng.randrange(0, 1024), base + rng.randrange(0, 1024)
    ports = struct.pack("!HH", rng.randrange(65536), rng.randrange(65536))
    body = ports + bytes(rng.randrange(0, 24))
    if rng.random() < 0.1:
        body = body[:rng.randrange(0, 4)]  # truncated transport header: no ports
    if v6:
        nh, ext = proto, b""
        if rng.random() < 0.2:  # a fragment header, sometimes a later fragment
            ext = bytes([proto, 0]) + struct.pack("!H", rng.choice([0, 8])) + bytes(4)
            nh = 44
        return struct.pack("!IHBB", 6 << 28, len(ext + body), nh, 64) + src.to_bytes(16, "big") + \
            dst.to_bytes(16, "big") + ext + body
    frag = rng.choice([0, 0, 0, 0x2000, 1])  # more-fragments with offset 0, or a later fragment
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, frag, 64, proto, 0,
                       src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + body


def test_c_lookup_agrees_with_python(pair: tuple[Node, Node]) -> None:
    a, _b = pair
    table = native.EspInboundTable()
    outs = [native.EspOutbound(sa(0x100 + i)) for i in range(6)]
    loop = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", 9), outbound=outs[0],
                                   inbound=table)
    assert loop.out_slot(_rand_pkt(random.Random(0), False)) == -2  # no policies: the loop's own SA
    rng = random.Random(10)
    checked = 0
    for _round in range(40):
        pols = [([_rand_ts(rng, rng.random() < 0.3) for _ in range(rng.randint(1, 3))],
                 [_rand_ts(rng, rng.random() < 0.3) for _ in range(rng.randint(1, 3))]) for _ in range(len(outs))]
        for i, (local, remote) in enumerate(pols):
            loop.set_out_policy(i, outs[i], local, remote)
        loop.set_in_policy(0x777, pols[0][0], pols[0][1])
        for _ in range(150):
            pkt = _rand_pkt(rng, rng.random() < 0.3)
            assert loop.out_slot(pkt) == pick_outbound(pkt, pols), pkt.hex()
            p = packet_selectors(pkt)
            want = p is not None and fits_inbound(p, pols[0][0], pols[0][1])
            assert loop.in_ok(0x777, pkt) is want, pkt.hex()
            checked += 1
    assert loop.in_ok(0x778, b"\x45")  # an SA without selectors here is not checked
    for i in range(len(outs)):
        loop.set_out_policy(i, None)
    assert loop.out_slot(_rand_pkt(rng, False)) == -2
    assert checked == 6000


# -- two children on two loops, real packets -------------------------------------------------

def test_two_children_each_on_its_own_sa(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # child 1: 10.1.0.0/24 <-> 10.2.0.0/25, child 2: 10.1.0.0/24 <-> 10.2.0.128/25
    a1, a2, b1, b2 = sa(0xA100), sa(0xA200), sa(0xB100), sa(0xB200)  # aN: a -> b of child N
    l_a, r_1, r_2 = [TS("10.1.0.0/24")], [TS("10.2.0.0/25")], [TS("10.2.0.128/25")]
    ta, tb = native.EspInboundTable(), native.EspInboundTable()
    ta.add(b1)
    ta.add(b2)
    tb.add(a1)
    tb.add(a2)
    oa1, oa2, ob1, ob2 = (native.EspOutbound(c) for c in (a1, a2, b1, b2))
    la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port), outbound=oa1,
                                 inbound=ta)
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port), outbound=ob1,
                                 inbound=tb)
    la.set_out_policy(0, oa1, l_a, r_1)
    la.set_out_policy(1, oa2, l_a, r_2)
    lb.set_out_policy(0, ob1, r_1, l_a)
    lb.set_out_policy(1, ob2, r_2, l_a)
    la.set_in_policy(b1.spi, l_a, r_1)
    la.set_in_policy(b2.spi, l_a, r_2)
    lb.set_in_policy(a1.spi, r_1, l_a)
    lb.set_in_policy(a2.spi, r_2, l_a)
    try:
        la.start()
        lb.start()
        assert ping(a.ns, "10.2.0.1") == 3
        assert ping(a.ns, "10.2.0.129", count=4) == 4
        # each child's traffic went out and came back on its own SA, both ways
        assert (tb.counters_for(a1.spi).packets, tb.counters_for(a2.spi).packets) == (3, 4)
        assert (ta.counters_for(b1.spi).packets, ta.counters_for(b2.spi).packets) == (3, 4)
        assert (oa1.counters.packets, oa2.counters.packets) == (3, 4)
        # a destination no child covers: not sent, counted
        ip("route", "add", "10.3.0.0/24", "dev", a.tun, ns=a.ns)
        assert ping(a.ns, "10.3.0.1", count=2) == 0
        assert la.stats["no_policy"] == 2 and oa1.counters.packets + oa2.counters.packets == 7
        # a's child 1 now (wrongly) claims 10.2.0.0/24: b receives 10.2.0.129 traffic on SA a1,
        # outside a1's selectors -> dropped and counted, never delivered
        la.set_out_policy(0, oa1, l_a, [TS("10.2.0.0/24")])
        assert ping(a.ns, "10.2.0.129", count=2) == 0
        deadline = time.monotonic() + 3
        while lb.stats["ts_drop"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lb.stats["ts_drop"] == 2 and tb.counters_for(a1.spi).packets == 5
        assert ta.counters_for(b2.spi).packets == 4  # no echo reply came back
    finally:
        la.stop()
        lb.stop()
    assert la.result == 0 and lb.result == 0
