"""native/src/offload.c on its own: TSO cut sizes and headers, checksums (cross-checked with scapy),
GRO coalescing decisions, and the plain-tun receive path of [fuzz] defect 1.  Driven through the C
program native/tests/offload_tool.c, built plain and with ASan+UBSan under gcc and clang."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from support.native_tools import VARIANTS, program
from support.paths import REPO  # noqa: E402

# xdist: one worker builds and runs offload_tool (two workers would write the same binary at once)
pytestmark = pytest.mark.xdist_group("offload_tool")

GSO_TCPV4, GSO_TCPV6 = 1, 4
VNET_LEN = 10


@pytest.fixture(scope="module", params=VARIANTS)
def tool(request: pytest.FixtureRequest) -> Path:
    return program(REPO / "native" / "tests" / "offload_tool.c", request.param)


def run(tool: Path, *commands: str) -> list[str]:
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([str(tool)], input="\n".join(commands) + "\n", capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0 and "runtime error" not in res.stderr, res.stderr[-3000:]
    return res.stdout.splitlines()


def tso(tool: Path, pkt: bytes, l2: int, gso_type: int, mss: int, max_out: int) -> list[bytes] | None:
    out = run(tool, f"tso {l2} {gso_type} {mss} {max_out} {pkt.hex()}")
    if out == ["reject"]:
        return None
    assert out[-1] == "end", out
    return [bytes.fromhex(line.split()[1]) for line in out[:-1]]


def valid(pkt: bytes, cls: type = IP) -> bool:
    """Whether every checksum in pkt is what scapy computes for the same headers."""
    p = cls(pkt)
    q = p.copy()
    for layer in (IP, TCP, UDP):
        if q.haslayer(layer) and hasattr(q[layer], "chksum"):
            del q[layer].chksum
    if cls is Ether:
        del q[IP if q.haslayer(IP) else IPv6].payload.chksum
    return bytes(q) == pkt


def tcp4(payload: bytes, seq: int = 1000, flags: str = "PA", sport: int = 1234, ip_id: int = 7) -> IP:
    return IP(src="10.0.0.1", dst="10.0.0.2", id=ip_id) / TCP(sport=sport, dport=80, seq=seq, ack=5,
                                                              flags=flags, window=500) / Raw(payload)


def test_tso_v4_cut_sizes_headers_checksums(tool: Path) -> None:
    payload = bytes(range(256)) * 12  # 3072 bytes: 1000 + 1000 + 1000 + 72
    segs = tso(tool, bytes(tcp4(payload, flags="FPA")), 0, GSO_TCPV4, 1000, 1500)
    assert segs is not None and [len(s) for s in segs] == [1040, 1040, 1040, 112]
    got = b""
    for i, s in enumerate(segs):
        p = IP(s)
        assert valid(s)
        assert p.len == len(s) and p.id == 7 + i and p[TCP].seq == 1000 + 1000 * i
        last = i == len(segs) - 1
        assert ("F" in p[TCP].flags, "P" in p[TCP].flags) == (last, last)  # FIN, PSH: last only
        got += bytes(p[TCP].payload)
    assert got == payload


def test_tso_v6_behind_ethernet_and_cwr_first_only(tool: Path) -> None:
    pkt = Ether(type=0x86DD) / IPv6(src="fd00::1", dst="fd00::2") / TCP(seq=5, flags="CA") / Raw(bytes(2500))
    segs = tso(tool, bytes(pkt), 14, GSO_TCPV6, 1200, 14 + 40 + 20 + 1200)
    assert segs is not None and [len(s) for s in segs] == [1274, 1274, 174]
    for i, s in enumerate(segs):
        p = Ether(s)
        assert valid(s, Ether)
        assert p[IPv6].plen == len(s) - 14 - 40 and p[TCP].seq == 5 + 1200 * i
        assert ("C" in p[TCP].flags) == (i == 0)


@pytest.mark.parametrize("case", ["ethertype", "too-big", "no-gso-size", "short-tcp-header", "v6-ext-header",
                                  "type-mismatch"])
def test_tso_refuses_what_it_cannot_cut(tool: Path, case: str) -> None:
    v4 = bytes(tcp4(bytes(3000)))
    if case == "ethertype":  # IPv4 behind an IPv6 EtherType
        assert tso(tool, bytes(Ether(type=0x86DD)) + v4, 14, GSO_TCPV4, 1000, 1500) is None
    elif case == "too-big":
        assert tso(tool, v4, 0, GSO_TCPV4, 1461, 1500) is None
    elif case == "no-gso-size":
        assert tso(tool, v4, 0, GSO_TCPV4, 0, 1500) is None
    elif case == "short-tcp-header":
        bad = bytearray(v4)
        bad[32] = 0x40  # data offset 4 words
        assert tso(tool, bytes(bad), 0, GSO_TCPV4, 1000, 1500) is None
    elif case == "v6-ext-header":
        p = IPv6(src="fd00::1", dst="fd00::2", nh=0) / Raw(bytes(3000))
        assert tso(tool, bytes(p), 0, GSO_TCPV6, 1000, 1500) is None
    else:
        assert tso(tool, v4, 0, GSO_TCPV6, 1000, 1500) is None


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    words = src + dst + struct.pack("!HH", proto, length)
    s = sum(struct.unpack(f"!{len(words) // 2}H", words))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@pytest.mark.parametrize("size", [0, 1, 7, 1000])
def test_vnet_checksum_completion_matches_scapy(tool: Path, size: int) -> None:
    p = IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=9, dport=4500) / Raw(bytes(range(size % 256)) * (size // 256 + 1))
    p = IP(bytes(p))  # lengths filled in
    raw = bytearray(bytes(p))
    udp_len = len(raw) - 20
    raw[26:28] = struct.pack("!H", pseudo_sum(raw[12:16], raw[16:20], 17, udp_len))  # CHECKSUM_PARTIAL
    out = run(tool, f"csum 20 6 {raw.hex()}")
    assert out[0].startswith("ok ")
    assert bytes.fromhex(out[0].split()[1]) == bytes(p)  # scapy's checksum


def test_vnet_checksum_outside_the_packet_is_refused(tool: Path) -> None:
    assert run(tool, "csum 20 6 " + bytes(27).hex()) == ["reject"]
    assert run(tool, "csum 65535 65535 " + bytes(64).hex()) == ["reject"]
    assert run(tool, "csum 0 1 " + bytes(64).hex()) == ["reject"]  # odd: no 16-bit field (fuzz finding)


def gro(tool: Path, l2: int, *pkts: bytes) -> tuple[int, list[tuple[int, bytes | None]]]:
    out = run(tool, f"gro {l2} " + " ".join(p.hex() for p in pkts))
    assert out[-1] == "end"
    assert out[-2].startswith("built ")  # printed after the writes it counts
    built = int(out[-2].split()[1])
    writes = []
    for line in out[:-2]:
        _, n, data = line.split()
        writes.append((int(n), None if data == "-" else bytes.fromhex(data)))
    return built, writes


def segments(n: int, mss: int = 1000, start: int = 1000, **kw: object) -> list[bytes]:
    return [bytes(tcp4(bytes([i]) * mss, seq=start + i * mss, flags="A", **kw)) for i in range(n)]


def test_gro_coalesces_one_flow_into_a_super_packet(tool: Path) -> None:
    segs = segments(3)
    last = bytes(tcp4(bytes([9]) * 400, seq=4000, flags="PA"))
    built, writes = gro(tool, 0, *segs, last)
    assert built == 1 and len(writes) == 1 and writes[0][0] == 4
    data = writes[0][1]
    assert data is not None
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", data[:VNET_LEN])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, GSO_TCPV4, 40, 1000, 20, 16)
    sup = IP(data[VNET_LEN:])
    assert sup.len == 40 + 3400 and "P" in sup[TCP].flags and sup[TCP].seq == 1000
    assert bytes(sup[TCP].payload) == bytes([0]) * 1000 + bytes([1]) * 1000 + bytes([2]) * 1000 + bytes([9]) * 400
    check = IP(bytes(sup))
    del check.chksum
    assert IP(bytes(check)).chksum == sup.chksum  # the IP header checksum is final
    raw = data[VNET_LEN:]
    assert struct.unpack("!H", raw[36:38])[0] == pseudo_sum(raw[12:16], raw[16:20], 6, len(raw) - 20)


@pytest.mark.parametrize("case", ["gap", "other-flow", "psh-middle", "longer", "non-tcp"])
def test_gro_run_breaks(tool: Path, case: str) -> None:
    a, b, c = segments(3)
    if case == "gap":
        b = bytes(tcp4(bytes(1000), seq=2500, flags="A"))
        expect = [1, 1, 1]  # b starts a run, c (seq 3000) does not follow it
    elif case == "other-flow":
        b = bytes(tcp4(bytes(1000), seq=2000, flags="A", sport=999))
        expect = [1, 1, 1]
    elif case == "psh-middle":
        b = bytes(tcp4(bytes(1000), seq=2000, flags="PA"))
        expect = [2, 1]
    elif case == "longer":  # a longer segment cannot follow a shorter first one
        a = bytes(tcp4(bytes(500), seq=1500, flags="A"))
        expect = [1, 2]
    else:
        b = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(bytes(100)))
        expect = [1, 1, 1]
    _, writes = gro(tool, 0, a, b, c)
    assert [n for n, _ in writes] == expect
    for n, data in writes:  # singles go behind a zero virtio header, in order
        assert data is not None
        if n == 1:
            assert data[:VNET_LEN] == bytes(VNET_LEN)


def test_gro_caps_a_run_at_64_segments(tool: Path) -> None:
    built, writes = gro(tool, 0, *segments(70, mss=100))
    assert built == 2 and [n for n, _ in writes] == [64, 6]


def test_gro_behind_ethernet(tool: Path) -> None:
    eth = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
    built, writes = gro(tool, 14, *(eth + s for s in segments(2)))
    assert built == 1 and writes[0][0] == 2
    data = writes[0][1]
    assert data is not None and data[VNET_LEN:VNET_LEN + 14] == eth
    assert struct.unpack("<BBHHHH", data[:VNET_LEN])[2:5] == (54, 1000, 34)
    tagged = bytes(Ether(type=0x8100)) + bytes(4)
    _, writes = gro(tool, 14, *(tagged + s for s in segments(2)))
    assert [n for n, _ in writes] == [1, 1]  # not plain Ethernet + IPv4: never coalesced


def test_plain_tun_receive_batch(tool: Path) -> None:
    # [fuzz] defect 1: on a tun without virtio headers the batch ended in NULL + 10 (clang UBSan)
    assert run(tool, "plainrx") == ["wrote 1"]
