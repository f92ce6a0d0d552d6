"""The C MACsec link loop without root: AF_UNIX datagram socketpairs stand in for the tap and the
phy (one frame per read/recvmmsg, as a tap and an AF_PACKET socket behave).  Frames on the "wire"
are checked against the Python reference SecY, and SA changes land while the loop runs."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.macsec.reference import MacsecRx as RefRx

native = pytest.importorskip("ipsecemu.dataplane.native")
macsec_loop = pytest.importorskip("ipsecemu.dataplane.native.macsec_loop")

SCI_A = bytes.fromhex("020000000a010001")
SCI_B = bytes.fromhex("020000000b010001")
SAK1 = bytes(range(16))
SAK2 = bytes(range(16, 32))


def _frame(i: int, size: int = 100, src: bytes = SCI_A) -> bytes:
    body = i.to_bytes(4, "big") + bytes(size - 18)
    dst = SCI_B if src == SCI_A else SCI_A
    return dst[:6] + src[:6] + b"\x08\x00" + body


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


def _drain(sock: socket.socket, want: int, timeout: float = 3.0) -> list[bytes]:
    out: list[bytes] = []
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            out.append(sock.recv(70000))
        except TimeoutError:
            pass
    return out


@pytest.fixture
def wires():
    """(tap_user, tap_loop, phy_loop, phy_wire) socket pairs, closed afterwards."""
    tap_user, tap_loop = _pair()
    phy_loop, phy_wire = _pair()
    for s in (tap_loop, phy_loop, phy_wire):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield tap_user, tap_loop, phy_loop, phy_wire
    for s in (tap_user, tap_loop, phy_loop, phy_wire):
        s.close()


@pytest.mark.parametrize("cipher", ["gcm-aes-128", "gcm-aes-xpn-256"])
@pytest.mark.parametrize("include_sci", [True, False])
def test_protects_what_the_reference_validates_and_back(wires, cipher: str, include_sci: bool) -> None:
    tap_user, tap_loop, phy_loop, phy_wire = wires
    xpn = "xpn" in cipher
    key = SAK1 * (2 if "256" in cipher else 1)
    extra = {"ssci": 1, "salt": bytes(range(12))} if xpn else {}
    secy = SecYConfig(include_sci=include_sci, end_station=not include_sci)
    sa_a = MacsecSaConfig(cipher, key, SCI_A, 0, next_pn=7, **extra)
    loop = macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, batch=8)
    # nothing leaves before MKA installed a Tx SA
    tap_user.send(_frame(0))
    loop.step(200)
    assert loop.stats["no_tx_sa"] == 1 and loop.stats["phy_tx"] == 0
    loop.set_tx(sa_a)
    frames = [_frame(i) for i in range(20)]
    for f in frames:
        tap_user.send(f)
    while loop.step(50) > 0:
        pass
    wire = _drain(phy_wire, 20)
    assert len(wire) == 20
    ref = RefRx(secy)
    ref.add_sa(sa_a)
    got = [ref.validate(w) for w in wire]
    assert [r.verdict for r in got] == [Verdict.OK] * 20
    assert [r.frame for r in got] == frames
    assert [r.pn for r in got] == list(range(7, 27))
    # the other way: the reference protects, the loop validates and writes to the tap
    from ipsecemu.macsec.reference import MacsecTx as RefTx

    sa_b = MacsecSaConfig(cipher, key, SCI_B, 1, next_pn=1, **({"ssci": 2, "salt": bytes(12)} if xpn else {}))
    loop.add_rx_sa(sa_b)
    ref_tx = RefTx(secy, sa_b)
    frames = [_frame(i, src=SCI_B) for i in range(6)]  # without SCI, the source MAC names the SC
    for f in frames[:5]:
        phy_wire.send(ref_tx.protect(f)[1])
    phy_wire.send(bytes(60))  # unprotected, strict: dropped
    phy_wire.send(bytes(12) + b"\x88\x8e" + bytes(50))  # EAPOL: left to MKA
    tampered = bytearray(ref_tx.protect(frames[5])[1])
    tampered[-1] ^= 1
    phy_wire.send(bytes(tampered))
    while loop.step(50) > 0:
        pass
    assert _drain(tap_user, 5) == frames[:5]
    st = loop.stats
    assert (st["validated"], st["unprotected_drop"], st["eapol"], st["validate_drop"]) == (5, 1, 1, 1)
    assert loop.rx_counters_for(SCI_B, 1).bad_icv == 1
    assert loop.tx is not None and loop.tx.counters.packets == 20
    loop.remove_rx_sa(SCI_B, 1)
    with pytest.raises(ConfigError):
        loop.remove_rx_sa(SCI_B, 1)


def test_sa_changes_while_running_lose_no_frames(wires) -> None:
    """Two loops back to back on their own threads; the Tx SA is switched (new AN) repeatedly
    while frames flow, after the new Rx SA was installed, as MKA does."""
    tap_a_user, tap_a, phy_a, phy_b = wires
    tap_b_user, tap_b = _pair()
    try:
        for s in (tap_b, tap_b_user, tap_a_user):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        secy = SecYConfig()
        la = macsec_loop.MacsecLinkLoop(tap_fd=tap_a.fileno(), phy_fd=phy_a.fileno(), secy=secy, batch=32, poll_ms=5)
        lb = macsec_loop.MacsecLinkLoop(tap_fd=tap_b.fileno(), phy_fd=phy_b.fileno(), secy=secy, batch=32, poll_ms=5)
        first = MacsecSaConfig("gcm-aes-128", SAK1, SCI_A, 0)
        lb.add_rx_sa(first)
        la.set_tx(first)
        la.start()
        lb.start()
        try:
            # AF_UNIX datagram queues hold only a few frames (max_dgram_qlen), unlike a tap: a
            # reader thread keeps up and the sender pauses a little between bursts
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.extend(_drain(tap_b_user, 1000, timeout=10)))
            reader.start()
            sent = 0
            for rot in range(1, 21):
                for _ in range(50):
                    tap_a_user.send(_frame(sent))
                    sent += 1
                    if sent % 4 == 0:
                        time.sleep(0.0005)
                new = MacsecSaConfig("gcm-aes-128", os.urandom(16), SCI_A, rot % 4)
                lb.add_rx_sa(new)  # make before break
                la.set_tx(new)
            reader.join()
        finally:
            la.stop()
            lb.stop()
        assert (la.stats["send_errors"], lb.stats["tap_tx_errors"]) == (0, 0)
        assert len(got) == sent
        assert [int.from_bytes(g[14:18], "big") for g in got] == list(range(sent))
        assert lb.stats["validate_drop"] == 0 and la.stats["send_errors"] == 0
    finally:
        tap_b.close()
        tap_b_user.close()


def test_bad_configuration_is_a_clear_error(wires) -> None:
    _, tap_loop, phy_loop, _ = wires
    with pytest.raises(ConfigError, match="batch"):
        macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=SecYConfig(), batch=0)
    with pytest.raises(ConfigError, match="max_frame"):
        macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=SecYConfig(), max_frame=10)
    with pytest.raises(ConfigError, match="tap_fd"):
        macsec_loop.MacsecLinkLoop(tap_fd=-1, phy_fd=phy_loop.fileno(), secy=SecYConfig())
    with pytest.raises(ConfigError):
        macsec_loop.MacsecLinkLoop(tap_fd=999_999, phy_fd=phy_loop.fileno(), secy=SecYConfig())


@pytest.mark.parametrize(("vlan", "qinq", "tags"), [
    (100, None, bytes.fromhex("81000064")),
    (None, (10, 4094), bytes.fromhex("88a8000a81000ffe")),
])
def test_vlan_tags_go_inside_the_protected_frame_and_are_checked(wires, vlan, qinq, tags: bytes) -> None:
    from ipsecemu.macsec.reference import MacsecTx as RefTx

    tap_user, tap_loop, phy_loop, phy_wire = wires
    secy = SecYConfig()
    sa = MacsecSaConfig("gcm-aes-128", SAK1, SCI_A, 2)
    loop = macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, vlan=vlan,
                                 qinq=qinq, max_frame=1514)
    loop.set_tx(sa)
    full = _frame(1, 1514)  # a full-size untagged frame still fits once tagged
    tap_user.send(full)
    loop.step(200)
    ref = RefRx(secy)
    ref.add_sa(sa)
    got = ref.validate(_drain(phy_wire, 1)[0])
    assert got.verdict is Verdict.OK and got.frame == full[:12] + tags + full[12:]
    # receive: our tags are stripped; other VIDs and untagged frames are dropped
    sb = MacsecSaConfig("gcm-aes-128", SAK2, SCI_B, 0)
    loop.add_rx_sa(sb)
    tx = RefTx(secy, sb)
    frame = _frame(2, src=SCI_B)
    wrong = tags[:-1] + bytes([tags[-1] ^ 1])
    for f in (frame[:12] + tags + frame[12:], frame[:12] + wrong + frame[12:], frame):
        phy_wire.send(tx.protect(f)[1])
    while loop.step(50) > 0:
        pass
    assert _drain(tap_user, 1) == [frame]
    assert loop.stats["vlan_drop"] == 2 and loop.stats["validated"] == 1
    with pytest.raises(ConfigError, match="vlan"):
        macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=secy, vlan=4095)


def test_tap_vnet_needs_a_vnet_tap(wires) -> None:
    tap_user, tap_loop, phy_loop, phy_wire = wires
    with pytest.raises(ConfigError, match="tap_vnet"):  # a socket is no vnet tap: refused, not misread
        macsec_loop.MacsecLinkLoop(tap_fd=tap_loop.fileno(), phy_fd=phy_loop.fileno(), secy=SecYConfig(), tap_vnet=True)


# ---- real vnet taps (root): the kernel hands the loop a TSO super-packet and takes GRO ones back ----

SOL_PACKET, PACKET_VNET_HDR, ETH_P_ALL, PACKET_OUTGOING = 263, 15, 3, 4
VNET = struct.Struct("<BBHHHH")  # struct virtio_net_hdr: flags gso_type hdr_len gso_size csum_start csum_offset


@contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """This thread in netns ``name`` (sockets and taps made meanwhile stay there), then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    new = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        assert libc.setns(new, 0x40000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWNET
        yield
    finally:
        libc.setns(orig, 0x40000000)
        os.close(orig)
        os.close(new)


def _vnet_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000 | 0x4000))  # TAP NO_PI VNET
    return fd


def _vnet_packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((ifname, 0))
    return s


@pytest.mark.root
@pytest.mark.parametrize("v6", [False, True])
def test_vnet_tap_cuts_super_packets_and_writes_them_back_coalesced(unique_name: str, v6: bool) -> None:
    """A 20000-byte TCP super-packet (injected on tap A through a PACKET_VNET_HDR socket, so the
    kernel hands it to the loop whole) leaves as MSS-size frames that the reference SecY validates
    and scapy finds correct (lengths, checksums, sequence numbers); loop B writes them to tap B as
    one super-packet again, which a packet socket there sees with its GSO size."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    ns = unique_name
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    fds: list[int] = []
    socks: list[socket.socket] = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True, timeout=10)
        with _in_netns(ns):
            fds += [_vnet_tap("ta"), _vnet_tap("tb")]
        secy = SecYConfig()
        sa = MacsecSaConfig("gcm-aes-128", SAK1, SCI_A, 0)
        phy_a, wire_a = _pair()
        wire_b, phy_b = _pair()
        socks += [phy_a, wire_a, wire_b, phy_b]
        la = macsec_loop.MacsecLinkLoop(tap_fd=fds[0], phy_fd=phy_a.fileno(), secy=secy, tap_vnet=True, max_frame=1514)
        lb = macsec_loop.MacsecLinkLoop(tap_fd=fds[1], phy_fd=phy_b.fileno(), secy=secy, tap_vnet=True, max_frame=1514)
        la.set_tx(sa)
        lb.add_rx_sa(sa)
        for dev in ("ta", "tb"):  # up once the loops turned the offloads on
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, timeout=10)
        with _in_netns(ns):
            inj, sniff = _vnet_packet_socket("ta"), _vnet_packet_socket("tb")
        socks += [inj, sniff]
        payload = os.urandom(20000)
        mss = 1440 if v6 else 1460
        l3 = (IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.9.0.1", dst="10.9.0.2", id=77))
        sup = bytes(Ether(src=SCI_A[:6], dst=SCI_B[:6]) / l3 / TCP(sport=4000, dport=5000, seq=1000, ack=1,
                                                                  flags="PA", window=500) / payload)
        hl = 14 + (40 if v6 else 20) + 20
        inj.send(VNET.pack(1, 4 if v6 else 1, hl, mss, hl - 20, 16) + sup)  # NEEDS_CSUM, GSO TCPV6/TCPV4
        ref = RefRx(secy)
        ref.add_sa(sa)
        segs: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(segs) < 14 and time.monotonic() < deadline:
            la.step(50)
            wire_a.settimeout(0.05)
            try:
                w = wire_a.recv(70000)
            except TimeoutError:
                continue
            got = ref.validate(w)
            assert got.verdict is Verdict.OK
            if TCP in Ether(got.frame):
                segs.append(got.frame)
                wire_b.send(w)
        assert len(segs) == 14 and la.stats["tap_tso"] == 1
        data = b""
        for i, f in enumerate(segs):
            e = Ether(f)
            tcp = e[TCP]
            assert len(f) <= 1514 and tcp.seq == 1000 + len(data) and tcp.ack == 1
            assert tcp.flags == ("PA" if i == 13 else "A")  # PSH only on the last segment
            data += bytes(tcp.payload)
            # checksums and lengths exactly as scapy computes them from scratch
            clean = e.copy()
            del clean[TCP].chksum
            if v6:
                del clean[IPv6].plen
            else:
                del clean[IP].chksum, clean[IP].len
            assert bytes(Ether(bytes(clean))) == f
            if not v6:
                assert e[IP].id == 77 + i
        assert data == payload
        # B: the 14 validated segments go up as one GSO frame
        sniff.settimeout(0.05)
        up: list[bytes] = []
        deadline = time.monotonic() + 3
        while not up and time.monotonic() < deadline:
            lb.step(50)
            try:
                pkt, addr = sniff.recvfrom(70000)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING and TCP in Ether(pkt[VNET.size:]):
                up.append(pkt)
        assert up, lb.stats
        flags, gso_type, _, gso_size, _, _ = VNET.unpack(up[0][:VNET.size])
        frame = Ether(up[0][VNET.size:])
        assert gso_type & 0x7F == (4 if v6 else 1) and gso_size == mss
        assert bytes(frame[TCP].payload) == payload and frame[TCP].seq == 1000
        assert lb.stats["tap_gro"] == 1 and lb.stats["validated"] == 14 and lb.stats["validate_drop"] == 0
        la.stop()
        lb.stop()
    finally:
        for s in socks:
            s.close()
        for fd in fds:
            os.close(fd)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
