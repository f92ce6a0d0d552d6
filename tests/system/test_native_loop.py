"""The C gateway loop (tun <-> ESP-in-UDP) in network namespaces: two loops carry pings between
two namespaces; the wire format is checked with the reference backend + scapy; IKE datagrams
and NAT-keepalives are split off.  Needs root."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.base.satypes import EspSaConfig, Lifetime, Verdict
from ipsecemu.dataplane import reference as ref
from ipsecemu.net.tun import open_tun

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
gateway_loop = pytest.importorskip("ipsecemu.dataplane.native.gateway_loop")
scapy_all = pytest.importorskip("scapy.all")

pytestmark = pytest.mark.root

AB = EspSaConfig(spi=0x1001, encr="aes-gcm-16", enc_key=bytes(range(20)))
BA = EspSaConfig(spi=0x2002, encr="aes-cbc", enc_key=bytes(range(16)), integ="hmac-sha256-128",
                 integ_key=bytes(range(32)))


def ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


class Node:
    """A netns with a tun device whose fd stays in this process."""

    def __init__(self, name: str, addr: str, remote_net: str, *, vnet: bool = False) -> None:
        self.ns, self.tun = name, name + "t"
        ip("netns", "add", self.ns)
        self.fd = open_tun(self.tun, vnet_hdr=vnet, blocking=True)
        ip("link", "set", self.tun, "netns", self.ns)
        ip("addr", "add", f"{addr}/32", "dev", self.tun, ns=self.ns)
        ip("link", "set", self.tun, "up", ns=self.ns)
        ip("route", "add", remote_net, "dev", self.tun, ns=self.ns)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port = self.udp.getsockname()[1]

    def close(self) -> None:
        self.udp.close()
        os.close(self.fd)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


@pytest.fixture
def nodes(unique_name: str) -> Iterator[tuple[Node, Node]]:
    made: list[Node] = []
    try:
        made.append(Node(unique_name + "a", "10.1.0.1", "10.2.0.0/24"))
        made.append(Node(unique_name + "b", "10.2.0.1", "10.1.0.0/24"))
        yield made[0], made[1]
    finally:
        for n in made:
            n.close()


def ping(ns: str, dst: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst],
                          capture_output=True, text=True, timeout=30)


def test_two_loops_carry_pings_and_split_ike(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
    a_table.add(BA)
    b_table.add(AB)
    ike_a, ike_py = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port),
                           outbound=native.EspOutbound(AB), inbound=a_table, ike_fd=ike_a.fileno())
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                           outbound=native.EspOutbound(BA), inbound=b_table)
    try:
        la.start()
        lb.start()
        res = ping(a.ns, "10.2.0.1")
        assert res.returncode == 0, res.stdout + res.stderr
        assert " 0% packet loss" in res.stdout

        # IKE (non-ESP marker) goes to the IKE socket with its source; keepalives are dropped
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"\0\0\0\0IKE_SA_INIT...", ("127.0.0.1", a.port))
            peer.sendto(b"\xff", ("127.0.0.1", a.port))
            peer.sendto(b"\x00\x00\x77\x77" + bytes(60), ("127.0.0.1", a.port))  # unknown SPI
            ike_py.settimeout(5)
            src, msg = gateway_loop.parse_ike_record(ike_py.recv(65535))
            assert (src, msg) == (peer.getsockname(), b"IKE_SA_INIT...")
            deadline = time.monotonic() + 5
            while la.stats["decap_drop"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        la.stop()
        lb.stop()
        ike_a.close()
        ike_py.close()
    assert la.result == 0 and lb.result == 0  # both threads came back from stop()
    sa, sb = la.stats, lb.stats
    assert sa["esp_tx"] >= 3 and sb["esp_ok"] >= 3 and sb["esp_tx"] >= 3 and sa["esp_ok"] >= 3
    assert (sa["ike_rx"], sa["keepalive"], sa["decap_drop"]) == (1, 1, 1)
    assert a_table.counters.unknown_sa == 1
    assert b_table.counters_for(AB.spi).packets == sa["esp_tx"]


def test_loop_wire_format_matches_reference_and_scapy(nodes: tuple[Node, Node]) -> None:
    a, _b = nodes
    IP, ICMP = scapy_all.IP, scapy_all.ICMP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        table = native.EspInboundTable()
        table.add(BA)
        loop = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=peer.getsockname(),
                                 outbound=native.EspOutbound(AB), inbound=table, batch=8)
        ref_in, ref_out = ref.EspInbound(AB), ref.EspOutbound(BA)
        # a reference-built ESP packet carrying an echo request to the namespace ...
        request = IP(src="10.2.0.9", dst="10.1.0.1") / ICMP(id=0x4242, seq=7) / b"ipsecemu"
        verdict, esp = ref_out.encap(bytes(request), 4)
        assert verdict is Verdict.OK
        peer.sendto(esp, ("127.0.0.1", a.port))
        # ... is decapsulated to tun; the kernel's reply comes back as ESP from the C loop
        # (next to any IPv6 noise the kernel sends on a fresh link, e.g. router solicitations)
        deadline, replies = time.monotonic() + 5, []
        peer.settimeout(0.05)
        while time.monotonic() < deadline:
            loop.step(50)
            try:
                res = ref_in.decap(peer.recv(65535))
            except (BlockingIOError, TimeoutError):
                continue
            assert res.verdict is Verdict.OK and res.next_header in (4, 41)
            replies.append(res)
            if res.next_header == 4:
                break
        v4 = [r for r in replies if r.next_header == 4]
        assert len(v4) == 1, loop.stats
        pkt = IP(v4[0].payload)
        assert (pkt.src, pkt.dst) == ("10.1.0.1", "10.2.0.9")
        assert pkt[ICMP].type == 0 and pkt[ICMP].id == 0x4242 and bytes(pkt[ICMP].payload) == b"ipsecemu"
        assert [r.seq for r in replies] == list(range(1, len(replies) + 1))
        assert loop.stats["esp_ok"] == 1 and loop.stats["esp_tx"] == len(replies)


def test_loop_drops_inner_packets_larger_than_mtu(nodes: tuple[Node, Node]) -> None:
    a, _b = nodes
    ip("link", "set", a.tun, "mtu", "3000", ns=a.ns)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        table = native.EspInboundTable()
        table.add(BA)
        out = native.EspOutbound(AB)
        loop = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=peer.getsockname(),
                                 outbound=out, inbound=table, mtu=1400)
        subprocess.run(["ip", "netns", "exec", a.ns, "ping", "-c", "1", "-s", "2000", "-W", "1", "10.2.0.1"],
                       capture_output=True, timeout=10)
        deadline = time.monotonic() + 5
        while loop.stats["encap_drop"] < 1 and time.monotonic() < deadline:
            loop.step(50)
        assert loop.stats["encap_drop"] == 1
        sent = loop.stats["esp_tx"]
        peer.settimeout(0.2)
        sizes = []
        for _ in range(sent):
            sizes.append(len(peer.recv(65535)))
        assert all(s < 1400 + 100 for s in sizes)  # only small IPv6 noise made it out
        assert out.next_seq == sent + 1  # the dropped packet used no sequence number


def test_two_loops_over_raw_esp(nodes: tuple[Node, Node], unique_name: str) -> None:
    a, b = nodes
    # rarely used loopback addresses, so no other raw ESP socket on the host sees our packets
    h = int(unique_name[1:], 16)
    addr_a, addr_b = (f"127.{100 + h % 100}.{(h >> 8) & 255}.{(h >> 16) & 254 | k}" for k in (0, 1))
    raw_a = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    raw_b = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    loops = []
    try:
        raw_a.bind((addr_a, 0))
        raw_b.bind((addr_b, 0))
        a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
        a_table.add(BA)
        b_table.add(AB)
        loops = [gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=raw_a.fileno(), peer=(addr_b, 0), raw_esp=True,
                                   outbound=native.EspOutbound(AB), inbound=a_table),
                 gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=raw_b.fileno(), peer=(addr_a, 0), raw_esp=True,
                                   outbound=native.EspOutbound(BA), inbound=b_table)]
        for loop in loops:
            loop.start()
        res = ping(b.ns, "10.1.0.1")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        for loop in loops:
            loop.stop()
        raw_a.close()
        raw_b.close()
    sa, sb = loops[0].stats, loops[1].stats
    assert sb["esp_tx"] >= 3 and sa["esp_ok"] >= 3 and sa["esp_tx"] >= 3 and sb["esp_ok"] >= 3
    assert sa["decap_drop"] == sb["decap_drop"] == 0 and sa["ike_rx"] == 0
    assert a_table.counters_for(BA.spi).packets == sb["esp_tx"]


@pytest.mark.parametrize("kwargs,match", [({"batch": 0}, "batch"), ({"mtu": 20}, "mtu"),
                                          ({"peer": ("not-an-ip", 4500)}, "peer"), ({"tun_fd": -1}, "tun_fd")])
def test_loop_bad_arguments_are_config_errors(kwargs: dict, match: str) -> None:
    table = native.EspInboundTable()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        args = {"tun_fd": s.fileno(), "udp_fd": s.fileno(), "peer": ("127.0.0.1", 4500),
                "outbound": native.EspOutbound(AB), "inbound": table, **kwargs}
        with pytest.raises(ValueError, match=match):
            gateway_loop.EspUdpLoop(**args)


def _wait(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_icmp_error_on_the_connected_socket_does_not_end_the_loop(nodes: tuple[Node, Node]) -> None:
    """The peer restarts: its port is closed for a while, so our sends draw ICMP port unreachable,
    which a connected UDP socket reports as POLLERR.  The loop counts it and goes on; once the
    peer listens again traffic flows without anyone restarting our loop."""
    a, b = nodes
    a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
    a_table.add(BA)
    b_table.add(AB)
    a.udp.connect(("127.0.0.1", b.port))  # as the gateway's per-connection socket
    b_out = native.EspOutbound(BA)
    la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port),
                           outbound=native.EspOutbound(AB), inbound=a_table)
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                           outbound=b_out, inbound=b_table)
    lb2 = None
    try:
        la.start()
        lb.start()
        assert ping(a.ns, "10.2.0.1", 2).returncode == 0
        lb.stop()
        b.udp.close()  # the peer is gone: port unreachable
        ping(a.ns, "10.2.0.1", 3)
        assert _wait(lambda: la.stats["sock_errors"] >= 1), la.stats
        assert la.result is None and la._thread is not None and la._thread.is_alive()
        # the peer comes back on the same port
        b.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.udp.bind(("127.0.0.1", b.port))
        lb2 = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                                outbound=b_out, inbound=b_table)
        lb2.start()
        res = ping(a.ns, "10.2.0.1", 3)
        assert res.returncode == 0 and " 0% packet loss" in res.stdout, (res.stdout, la.stats)
        assert la.result is None  # the same loop carried the traffic after the error
    finally:
        la.stop()
        lb.stop()
        if lb2 is not None:
            lb2.stop()
    assert la.result == 0
    assert la.stats["esp_ok"] >= 5 and la.stats["sock_errors"] >= 1


def test_live_rekey_without_stopping_the_loops(nodes: tuple[Node, Node]) -> None:
    """Make-before-break rekey while a ping stream runs: new inbound SAs go in, the outbound
    SAs switch, the old inbound SAs go, all between batches of running loops; nothing is lost."""
    a, b = nodes
    ab2 = dataclasses.replace(AB, spi=0x3003, enc_key=bytes(range(100, 120)))
    ba2 = dataclasses.replace(BA, spi=0x4004, enc_key=bytes(range(50, 66)))
    a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
    a_table.add(BA)
    b_table.add(AB)
    la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port),
                           outbound=native.EspOutbound(AB), inbound=a_table)
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                           outbound=native.EspOutbound(BA), inbound=b_table)
    threads = []
    try:
        la.start()
        lb.start()
        threads = [la._thread, lb._thread]
        pinger = subprocess.Popen(["ip", "netns", "exec", a.ns, "ping", "-c", "150", "-i", "0.01", "-W", "2",
                                   "10.2.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.4)
            with la.paused(), lb.paused():  # make: both new inbound SAs first
                a_table.add(ba2)
                b_table.add(ab2)
            old_ab = la.set_outbound(native.EspOutbound(ab2))
            time.sleep(0.2)
            lb.set_outbound(native.EspOutbound(ba2))
            time.sleep(0.3)
            with la.paused():  # break: the old inbound SAs go
                a_table.remove(BA.spi)
            with lb.paused():
                b_table.remove(AB.spi)
            for _ in range(100):  # many short pauses under traffic: no deadlock, no loss
                with la.paused():
                    pass
            out, _ = pinger.communicate(timeout=30)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait()
        assert pinger.returncode == 0 and " 0% packet loss" in out, out
        assert old_ab.cfg.spi == AB.spi and old_ab.counters.packets > 0
        assert b_table.counters_for(ab2.spi).packets > 0 and a_table.counters_for(ba2.spi).packets > 0
        assert AB.spi not in b_table and BA.spi not in a_table
        assert la.result is None and all(t is not None and t.is_alive() for t in threads)
        assert la._thread is threads[0]  # the same thread all along: never stopped
    finally:
        la.stop()
        lb.stop()
    assert la.stats["decap_drop"] == 0 and lb.stats["decap_drop"] == 0, (la.stats, lb.stats)


def test_set_outbound_needs_a_c_path_sa(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    table = native.EspInboundTable()
    loop = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port),
                             outbound=native.EspOutbound(AB), inbound=table)
    chacha = EspSaConfig(spi=0x5005, encr="chacha20-poly1305", enc_key=bytes(36))
    with pytest.raises(ValueError, match="C-path SA"):
        loop.set_outbound(native.EspOutbound(chacha))
    assert loop.outbound.cfg.spi == AB.spi


RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.2.0.1", 9000))
s.settimeout(5)
print("ready", flush=True)
seen = set()
try:
    while len(seen) < int(sys.argv[1]):
        d = s.recv(65535)
        seen.add(d)
except TimeoutError:
    pass
print(len(seen), flush=True)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(i.to_bytes(4, "big") * 250, ("10.2.0.1", 9000))
"""


def test_burst_leaves_as_gso_trains_and_arrives_through_gro(nodes: tuple[Node, Node]) -> None:
    """60 equal-size packets queued on tun A go out in one loop step as UDP GSO trains; a plain
    socket sees 60 separate ESP datagrams with consecutive sequence numbers (the reference
    decrypts each), and loop B (UDP GRO) receives them as trains, splits and delivers all 60."""
    a, b = nodes
    n = 60
    b_table = native.EspInboundTable()
    b_table.add(AB)
    recv = subprocess.Popen(["ip", "netns", "exec", b.ns, "python3", "-c", RECEIVER, str(n)],
                            stdout=subprocess.PIPE, text=True)
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                           outbound=native.EspOutbound(BA), inbound=b_table, batch=64)
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a second copy of the wire, no GRO
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        lb.start()
        tap.bind(("127.0.0.1", 0))
        tap.settimeout(2)
        out_a = native.EspOutbound(AB)
        la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port), outbound=out_a,
                               inbound=native.EspInboundTable(), batch=64)
        subprocess.run(["ip", "netns", "exec", a.ns, "python3", "-c", SENDER, str(n)], check=True, timeout=10)
        while la.step(100) > 0:  # everything queued on the tun, in batches of up to 64
            pass
        assert la.stats["udp_gso_trains"] >= 1 and la.stats["esp_tx"] >= n, la.stats
        # the same packets once more, from a fresh SA to the tap socket: the wire format
        del la
        lt = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=tap.getsockname(),
                               outbound=native.EspOutbound(AB), inbound=native.EspInboundTable(), batch=64)
        subprocess.run(["ip", "netns", "exec", a.ns, "python3", "-c", SENDER, "20"], check=True, timeout=10)
        while lt.step(100) > 0:
            pass
        ref_in = ref.EspInbound(AB)
        got = [ref_in.decap(tap.recv(65535)) for _ in range(lt.stats["esp_tx"])]
        assert lt.stats["udp_gso_trains"] >= 1
        assert all(r.verdict is Verdict.OK for r in got)
        assert [r.seq for r in got] == list(range(1, len(got) + 1))
        udp = [scapy_all.IP(r.payload) for r in got if r.next_header == 4]
        assert [bytes(p[scapy_all.UDP].payload)[:4] for p in udp] == [i.to_bytes(4, "big") for i in range(20)]
        out, _ = recv.communicate(timeout=15)
        assert out.strip() == str(n)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
        lb.stop()
        tap.close()
    assert lb.stats["udp_gro_trains"] >= 1 and lb.stats["esp_ok"] >= n and lb.stats["decap_drop"] == 0, lb.stats
    assert b.udp.getsockopt(socket.IPPROTO_UDP, 104) == 1  # UDP_GRO while the loop exists ...
    del lb
    assert b.udp.getsockopt(socket.IPPROTO_UDP, 104) == 0  # ... and off once it is freed


TCP_SINK = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9001))
s.listen(1)
s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
c.sendall(h.hexdigest().encode())
c.close()
print(n, h.hexdigest(), flush=True)
"""
TCP_SOURCE = """
import hashlib, socket, sys
data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(int(sys.argv[1]) // 32))
c = socket.create_connection((sys.argv[2], 9001), timeout=20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
print(len(data), hashlib.sha256(data).hexdigest(), c.recv(100).decode(), flush=True)
"""


@pytest.mark.parametrize(("vnet_b", "v6"), [(True, False), (False, False), (True, True)],
                         ids=["vnet-both", "vnet-one-side", "vnet-both-ipv6-inner"])
def test_tcp_through_vnet_tun_cut_from_tso_super_packets(unique_name: str, vnet_b: bool, v6: bool,
                                                         tmp_path: Path) -> None:
    """With IFF_VNET_HDR + TSO on tun A the kernel hands the loop TCP super-packets; the loop
    cuts them into MTU-size segments (headers and checksums rebuilt).  B's loop coalesces the
    segments back into super-packets if its tun has a vnet header too.  4 MB over TCP arrive
    intact (sha256 on both ends) either way; the kernel checks every TCP checksum."""
    made: list[Node] = []
    loops = []
    try:
        a = Node(unique_name + "a", "10.1.0.1", "10.2.0.0/24", vnet=True)
        made.append(a)
        b = Node(unique_name + "b", "10.2.0.1", "10.1.0.0/24", vnet=vnet_b)
        made.append(b)
        a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
        a_table.add(BA)
        b_table.add(AB)
        loops = [gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port), tun_vnet=True,
                                   outbound=native.EspOutbound(AB), inbound=a_table, mtu=1400),
                 gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port), tun_vnet=vnet_b,
                                   outbound=native.EspOutbound(BA), inbound=b_table, mtu=1400)]
        for n, mine, theirs in ((a, "fd00:1::1", "fd00:2::/64"), (b, "fd00:2::1", "fd00:1::/64")):
            ip("link", "set", n.tun, "mtu", "1400", ns=n.ns)
            if v6:
                ip("-6", "addr", "add", f"{mine}/128", "dev", n.tun, "nodad", ns=n.ns)
                ip("-6", "route", "add", theirs, "dev", n.tun, ns=n.ns)
        dst = "fd00:2::1" if v6 else "10.2.0.1"
        for loop in loops:
            loop.start()
        # what B's loop writes to its tun, headers only: the coalesced packets' checksum fields
        pcap = tmp_path / "b.pcap"
        dump = subprocess.Popen(["ip", "netns", "exec", b.ns, "tcpdump", "-i", b.tun, "-s", "128", "-c", "50",
                                 "-U", "-w", str(pcap), "tcp and greater 1500"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        sink = subprocess.Popen(["ip", "netns", "exec", b.ns, "python3", "-c", TCP_SINK, dst],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            src = subprocess.run(["ip", "netns", "exec", a.ns, "python3", "-c", TCP_SOURCE, str(4 << 20), dst],
                                 capture_output=True, text=True, timeout=60)
            out, _ = sink.communicate(timeout=30)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()
        n_sent, digest, echoed = src.stdout.split()
        assert out.split() == [n_sent, digest] and echoed == digest, (src.stderr, loops[0].stats)
        try:
            dump.wait(timeout=2)
        except subprocess.TimeoutExpired:
            dump.terminate()
            dump.wait(timeout=5)
        big = list(scapy_all.rdpcap(str(pcap)))
    finally:
        for loop in loops:
            loop.stop()
        for n in made:
            n.close()
    sa, sb = loops[0].stats, loops[1].stats
    assert sa["tun_tso"] >= 1 and sa["tun_rx"] > sa["tun_tso"], sa  # super-packets, cut here
    assert sa["encap_drop"] == 0 and sb["decap_drop"] == 0 and sb["tun_tx_errors"] == 0, (sa, sb)
    assert sb["esp_ok"] >= (4 << 20) // 1400 and sa["esp_ok"] > 0  # data one way, ACKs back to a vnet tun
    # B writes runs of segments of the flow as super-packets when its tun can take them
    assert (sb["tun_gro"] >= 1) == vnet_b and sb["tun_gro"] < sb["esp_ok"], sb
    if vnet_b:  # handed over CHECKSUM_PARTIAL: the TCP field must hold the pseudo-header sum
        assert big
        for pkt in big:
            raw = bytes(pkt)
            iphl, src_dst = (40, raw[8:40]) if v6 else ((raw[0] & 15) * 4, raw[12:20])
            total = int.from_bytes(raw[4:6], "big") + 40 if v6 else int.from_bytes(raw[2:4], "big")
            assert total > 1400  # more than one segment
            words = src_dst + (6).to_bytes(2, "big") + (total - iphl).to_bytes(2, "big")
            seed = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
            while seed >> 16:
                seed = (seed & 0xFFFF) + (seed >> 16)
            assert int.from_bytes(raw[iphl + 16:iphl + 18], "big") == seed


def test_vnet_flag_must_match_the_tun(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    with pytest.raises(ValueError, match="tun_vnet"):
        gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port), tun_vnet=True,
                          outbound=native.EspOutbound(AB), inbound=native.EspInboundTable())


def test_soft_limit_wakes_the_control_side_at_once(nodes: tuple[Node, Node]) -> None:
    """ie_loop_set_wakeup: the loop pops its SAs' expire events itself and writes the eventfd
    within the batch that crossed the soft limit (no polling), outbound and inbound."""
    a, b = nodes
    life = Lifetime(soft_packets=4, hard_packets=1000)
    ab, ba = dataclasses.replace(AB, lifetime=life), dataclasses.replace(BA, lifetime=life)
    a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
    a_table.add(ba)
    b_table.add(ab)
    out_a = native.EspOutbound(ab)
    la = gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=a.udp.fileno(), peer=("127.0.0.1", b.port),
                                 outbound=out_a, inbound=a_table)
    lb = gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=b.udp.fileno(), peer=("127.0.0.1", a.port),
                                 outbound=native.EspOutbound(ba), inbound=b_table)
    efd_a, efd_b = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    la.set_wakeup(efd_a)
    lb.set_wakeup(efd_b)
    try:
        la.start()
        lb.start()
        proc = subprocess.Popen(["ip", "netns", "exec", a.ns, "ping", "-c", "6", "-i", "0.2", "10.2.0.1"],
                                stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        got_a, got_b = select.select([efd_a], [], [], 5)[0], select.select([efd_b], [], [], 5)[0]
        woke_after = time.monotonic() - t0
        proc.wait(10)
        assert got_a and got_b and os.eventfd_read(efd_a) >= 1 and os.eventfd_read(efd_b) >= 1
        ev_a, ev_b = la.events(), lb.events()
    finally:
        la.stop()
        lb.stop()
        os.close(efd_a)
        os.close(efd_b)
    # a: its outbound crossed 4 packets, then its inbound (the replies); b: the other way round
    assert gateway_loop.LoopEvent(True, la.sa_id(out_a), 0, "soft", "packets") in ev_a, ev_a
    assert gateway_loop.LoopEvent(False, 0, BA.spi, "soft", "packets") in ev_a, ev_a
    assert gateway_loop.LoopEvent(False, 0, AB.spi, "soft", "packets") in ev_b, ev_b
    assert not [e for e in ev_a + ev_b if e.kind == "hard"]
    print(f"\nsoft-limit wake-up: both sides woken {woke_after:.2f} s after the pings started (one every 0.2 s)")
