"""Transport-mode ESP through the C gateway loop between two hosts (network namespaces joined by a
veth), with only TCP port 8080 steered into the loop's tun by Linux policy routing
(``ip rule ... ipproto tcp dport/sport 8080``): the issue-12 host policy's data path.

Verdicts come from a capture on the veth: HTTP on 8080 crosses only as ESP (ESP-in-UDP 4500 or
IP protocol 50), whose ESP next header is 6 (TCP: transport framing, not 4) and which scapy's
transport-mode ESP decrypts back to the HTTP exchange; HTTP on 80 and ping cross in clear.  The
8080 download's throughput is printed (3DES-SHA1 and AES-GCM).  Needs root."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.net.netns import entered
from ipsecemu.net.tun import open_tun

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
gateway_loop = pytest.importorskip("ipsecemu.dataplane.native.gateway_loop")
scapy_all = pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402

pytestmark = pytest.mark.root

A, B = "10.9.0.1", "10.9.0.2"
SUITES = {
    "3des-sha1": (dict(encr="3des-cbc", enc_key=bytes(range(1, 25)), integ="hmac-sha1-96",
                       integ_key=bytes(range(40, 60))), ("3DES", "HMAC-SHA1-96")),
    "aes-gcm-16": (dict(encr="aes-gcm-16", enc_key=bytes(range(1, 21))), ("AES-GCM", None)),
}
SPI_AB, SPI_BA = 0x3A0B, 0x3B0A
MARKER = b"issue-12 transport mode over 8080\n"
BIG = 8 << 20


# the tools (curl, tcpdump, the HTTP servers) run without the sanitizer runtime that
# test_native_asan preloads for this process: an ASan-preloaded curl hangs
TOOL_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60, env=TOOL_ENV)


class Host:
    """A netns with a veth end, a tun (fd kept here) and policy routing of TCP 8080 into the tun."""

    def __init__(self, ns: str, veth: str, addr: str, peer: str) -> None:
        self.ns, self.tun, self.addr, self.veth = ns, ns + "t", addr, veth
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", veth, "netns", ns)
        sh("ip", "addr", "add", f"{addr}/24", "dev", veth, ns=ns)
        sh("ip", "link", "set", veth, "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        self.fd = open_tun(self.tun, blocking=True)
        sh("ip", "link", "set", self.tun, "netns", ns)
        # no IPv6 on the tun: its router solicitations are not to the peer (the loop would count them)
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.tun}.disable_ipv6=1", ns=ns)
        sh("ip", "link", "set", self.tun, "mtu", "1400", "up", ns=ns)
        # decapsulated packets arrive on the tun while the route back is the veth: no rp_filter
        for conf in ("all", "default", self.tun):
            sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0", ns=ns)
        # only TCP to or from port 8080 (mirrored) takes the tun; IKE/ESP, ping, HTTP 80 do not
        sh("ip", "route", "add", f"{peer}/32", "dev", self.tun, "src", addr, "table", "108", ns=ns)
        for port in ("dport", "sport"):
            sh("ip", "rule", "add", "ipproto", "tcp", port, "8080", "table", "108", "priority", "100", ns=ns)

    def socket(self, raw: bool) -> socket.socket:
        with entered(self.ns):
            s = (socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) if raw
                 else socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.bind((self.addr, 0 if raw else 4500))
        return s

    def close(self) -> None:
        os.close(self.fd)
        sh("ip", "netns", "del", self.ns, check=False)


@pytest.fixture
def hosts(unique_name: str) -> Iterator[tuple[Host, Host]]:
    made: list[Host] = []
    va, vb = unique_name + "va", unique_name + "vb"
    try:
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        made.append(Host(unique_name + "a", va, A, B))
        made.append(Host(unique_name + "b", vb, B, A))
        yield made[0], made[1]
    finally:
        for h in made:
            h.close()
        sh("ip", "link", "del", va, check=False)


def _fetch(ns: str, url: str, within: float = 20.0) -> str:
    """curl ``url`` from ``ns`` until it answers: each http.server takes a moment to listen, seconds
    on a loaded box (CI once saw port 80's still starting after 8080's answered)."""
    deadline = time.monotonic() + within
    got = ""
    while time.monotonic() < deadline:
        got = sh("curl", "-s", "--max-time", "3", url, ns=ns, check=False).stdout
        if got:
            break
        time.sleep(0.2)
    return got


def _sa(suite: str, spi: int) -> EspSaConfig:
    return EspSaConfig(spi=spi, mode="transport", **SUITES[suite][0])  # type: ignore[arg-type]


def _scapy_sa(suite: str, spi: int, nat_t: bool) -> SecurityAssociation:
    kw, (crypt, auth) = SUITES[suite]
    return SecurityAssociation(ESP, spi=spi, crypt_algo=crypt, crypt_key=kw["enc_key"], auth_algo=auth,
                               auth_key=kw.get("integ_key") or None,
                               nat_t_header=UDP(sport=4500, dport=4500) if nat_t else None)


@pytest.mark.parametrize(("suite", "raw"), [("3des-sha1", False), ("3des-sha1", True), ("aes-gcm-16", False)],
                         ids=["3des-sha1-udp4500", "3des-sha1-raw-esp", "aes-gcm-16-udp4500"])
def test_transport_mode_http_8080_only(hosts: tuple[Host, Host], suite: str, raw: bool, tmp_path: Path) -> None:
    a, b = hosts
    (tmp_path / "hello.txt").write_bytes(MARKER)
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256))
    a_table, b_table = native.EspInboundTable(), native.EspInboundTable()
    a_table.add(_sa(suite, SPI_BA))
    b_table.add(_sa(suite, SPI_AB))
    socks = [a.socket(raw), b.socket(raw)]
    peer_port = 0 if raw else 4500
    loops = [gateway_loop.EspUdpLoop(tun_fd=a.fd, udp_fd=socks[0].fileno(), peer=(B, peer_port), raw_esp=raw,
                                     outbound=native.EspOutbound(_sa(suite, SPI_AB)), inbound=a_table, mtu=1400,
                                     transport=True, local=A),
             gateway_loop.EspUdpLoop(tun_fd=b.fd, udp_fd=socks[1].fileno(), peer=(A, peer_port), raw_esp=raw,
                                     outbound=native.EspOutbound(_sa(suite, SPI_BA)), inbound=b_table, mtu=1400,
                                     transport=True, local=B)]
    servers: list[subprocess.Popen[bytes]] = []
    pcap = tmp_path / "veth.pcap"
    dump = None
    try:
        for loop in loops:
            loop.start()
        for port in ("8080", "80"):
            servers.append(subprocess.Popen(["ip", "netns", "exec", b.ns, "python3", "-m", "http.server", port,
                                             "--bind", B, "--directory", str(tmp_path)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=TOOL_ENV))
        dump = subprocess.Popen(["ip", "netns", "exec", a.ns, "tcpdump", "--immediate-mode", "-i", a.veth, "-s", "256", "-U", "-w",
                                 str(pcap), "not arp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=TOOL_ENV)
        assert dump.stderr is not None and "listening" in dump.stderr.readline()
        got = _fetch(a.ns, f"http://{B}:8080/hello.txt")
        assert got.encode() == MARKER, loops[0].stats
        plain80 = _fetch(a.ns, f"http://{B}:80/hello.txt")  # its own server: started with 8080's, maybe later up
        assert plain80.encode() == MARKER
        assert sh("ping", "-c", "2", "-i", "0.2", "-W", "2", B, ns=a.ns, check=False).returncode == 0
        time.sleep(0.5)  # the capture covers the exchanges above, not the bulk download below
        dump.terminate()
        dump.wait(timeout=5)
        speed = sh("curl", "-s", "-o", "/dev/null", "--max-time", "40", "-w", "%{size_download} %{speed_download}",
                   f"http://{B}:8080/big.bin", ns=a.ns, check=False).stdout.split()
        assert int(speed[0]) == BIG, (speed, loops[0].stats, loops[1].stats)
        print(f"\n[transport {suite} {'raw ESP' if raw else 'ESP-in-UDP'}] HTTP 8080 download "
              f"{BIG >> 20} MiB: {float(speed[1]) * 8 / 1e6:.0f} Mbit/s")
    finally:
        if dump is not None and dump.poll() is None:
            dump.terminate()
            dump.wait(timeout=5)
        for srv in servers:
            srv.terminate()
            srv.wait(timeout=5)
        for loop in loops:
            loop.stop()
        for s in socks:
            s.close()
    sa, sb = loops[0].stats, loops[1].stats
    assert sa["encap_drop"] == sb["encap_drop"] == 0 and sa["decap_drop"] == sb["decap_drop"] == 0, (sa, sb)
    assert sb["esp_ok"] > 0 and sa["esp_ok"] >= BIG // 1400

    pkts = scapy_all.rdpcap(str(pcap))
    clear_8080 = [p for p in pkts if TCP in p and 8080 in (p[TCP].sport, p[TCP].dport)]
    assert not clear_8080, "TCP 8080 crossed the wire in clear"
    assert any(TCP in p and p[TCP].dport == 80 for p in pkts), "HTTP on 80 should cross in clear"
    assert any(p.haslayer("ICMP") for p in pkts), "ping should cross in clear"
    esp = [p for p in pkts if IP in p and (p[IP].proto == 50 if raw else UDP in p and p[UDP].dport == 4500)]
    assert esp
    nat_t = not raw
    ab, ba = _scapy_sa(suite, SPI_AB, nat_t), _scapy_sa(suite, SPI_BA, nat_t)
    seen_http, nhs, n = False, set(), 0
    for p in esp:
        if p.wirelen > len(bytes(p)):
            continue  # truncated by the snap length: cannot be authenticated
        sa = ab if p[IP].src == A else ba
        for one in _datagrams(p, nat_t):
            dec = sa.decrypt(one)
            n += 1
            nhs.add(dec[IP].proto)
            assert TCP in dec and 8080 in (dec[TCP].sport, dec[TCP].dport)
            assert (dec[IP].src, dec[IP].dst) == (p[IP].src, p[IP].dst)
            seen_http |= b"GET /hello.txt" in bytes(dec[TCP].payload) or MARKER in bytes(dec[TCP].payload)
    assert n >= 8
    assert nhs == {6}, f"ESP next header(s) {nhs}: transport framing carries TCP (6), not IP-in-IP (4)"
    assert seen_http


def _datagrams(p: scapy_all.Packet, nat_t: bool) -> list[IP]:
    """The ESP datagrams in one captured packet as IP packets.  veth passes UDP GSO trains on
    unsegmented, so tcpdump may see several ESP packets behind one UDP header: split them where
    the SPI is followed by the next sequence number."""
    if not nat_t:
        return [IP(bytes(p[IP]))]
    body = bytes(p[UDP].payload)
    spi, seq = body[:4], int.from_bytes(body[4:8], "big")
    cuts, at = [0], 0
    while True:
        at = body.find(spi + (seq + len(cuts)).to_bytes(4, "big"), at + 1)
        if at < 0:
            break
        cuts.append(at)
    parts = [body[a:b] for a, b in zip(cuts, [*cuts[1:], len(body)], strict=True)]
    hdr = p[IP]
    return [IP(bytes(IP(src=hdr.src, dst=hdr.dst) / UDP(sport=4500, dport=4500) / part)) for part in parts]
