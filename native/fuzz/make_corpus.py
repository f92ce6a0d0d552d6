"""Write the seed corpora of the libFuzzer harnesses (native/fuzz/corpus/<target>/) with the
project's own code: ESP packets from ipsecemu.esp.reference and MACsec frames from
ipsecemu.macsec.reference under the harnesses' fixed keys (fuzz.h), inner packets from scapy, laid
out in each harness's input format (see the comment at the top of each fuzz_*.c).

    .venv/bin/python native/fuzz/make_corpus.py

Deterministic (fixed IVs), so re-running it changes nothing; regression inputs from fuzzing
(files not named seed-*) are left alone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig
from ipsecemu.esp.reference import EspOutbound
from ipsecemu.esp.transport import encap_transport
from ipsecemu.macsec.reference import MacsecTx

CORPUS = Path(__file__).resolve().parent / "corpus"
ENC_KEY = bytes(range(0x10, 0x34))
INTEG_KEY = bytes(range(0x40, 0x80))
SALT = bytes(range(0x70, 0x7C))
SPI = 0x1000
SCI = bytes.fromhex("0200000000010001")
ENCR = ["aes-gcm-16", "aes-gcm-8", "aes-gcm-12", "aes-cbc"]
INTEG = ["hmac-sha1-96", "hmac-sha256-128", "hmac-sha384-192", "hmac-sha512-256"]
CIPHERS = ["gcm-aes-128", "gcm-aes-256", "gcm-aes-xpn-128", "gcm-aes-xpn-256"]
VALIDATE = ["strict", "check", "disabled", "strict"]
VNET_GSO_TCPV4, VNET_GSO_TCPV6 = 1, 4


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def chunk(data: bytes) -> bytes:
    return u16(len(data)) + data


def esp_sa(cfg: int) -> EspSaConfig:
    """The SA fuzz_esp_cfg(cfg) builds in C."""
    encr = "3des-cbc" if cfg & 128 else ENCR[cfg & 3]
    aes = 24 if cfg & 128 else 32 if cfg & 64 else 16
    if encr in ("aes-cbc", "3des-cbc"):
        integ = INTEG[(cfg >> 2) & 3]
        ilen = {"hmac-sha1-96": 20, "hmac-sha256-128": 32, "hmac-sha384-192": 48, "hmac-sha512-256": 64}[integ]
        return EspSaConfig(spi=SPI, encr=encr, enc_key=ENC_KEY[:aes], integ=integ, integ_key=INTEG_KEY[:ilen],
                           esn=bool(cfg & 16), replay_window=4096 if cfg & 32 else 64)
    return EspSaConfig(spi=SPI, encr=encr, enc_key=ENC_KEY[:aes + 4], esn=bool(cfg & 16),
                       replay_window=4096 if cfg & 32 else 64)


def esp_packets(cfg: int, inner: Iterable[bytes]) -> list[bytes]:
    sa = esp_sa(cfg)
    out = EspOutbound(sa)
    iv = bytes(16 if sa.encr == "aes-cbc" else 8)  # 3DES: 8 like GCM
    res = []
    for p in inner:
        verdict, pkt = out.encap(p, 41 if p[:1] and p[0] >> 4 == 6 else 4, iv=iv)
        assert verdict.name == "OK", verdict
        res.append(pkt)
    return res


def tcp_run(n: int, mss: int = 1000, v6: bool = False, flags: str = "A") -> list[bytes]:
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.1.0.1", dst="10.2.0.1", id=1)
    return [bytes(ip / TCP(sport=40000, dport=5201, seq=1000 + i * mss, ack=1, flags=flags) / Raw(bytes([i]) * mss))
            for i in range(n)]


def vnet_hdr(gso_type: int = 0, gso_size: int = 0, hdr_len: int = 0, csum: tuple[int, int] | None = None) -> bytes:
    flags = 1 if csum else 0
    start, off = csum or (0, 0)
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, start, off)


def super_packet(size: int = 4000, v6: bool = False) -> bytes:
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.1.0.1", dst="10.2.0.1", id=9)
    return bytes(ip / TCP(sport=40000, dport=5201, seq=7, ack=1, flags="PA") / Raw(bytes(range(256)) * (size // 256)))


def transport_packets(cfg: int, pkts: Iterable[bytes]) -> list[bytes]:
    """Transport-mode ESP (the reference's) of whole IP packets."""
    sa = esp_sa(cfg)
    out = EspOutbound(sa)
    iv = bytes(16 if sa.encr == "aes-cbc" else 8)
    res = []
    for p in pkts:
        verdict, pkt = encap_transport(out, p, iv=iv)
        assert verdict.name == "OK", verdict
        res.append(pkt)
    return res


def seeds_esp() -> dict[str, bytes]:
    s = {}
    # transport mode (mode bit 1): TCP to 8080 over IPv4 and IPv6, 3DES-SHA1 and AES-GCM-16
    for cfg in (0x80, 0x80 | 0x04 | 0x10, 0x00, 0x03):
        pkts = [bytes(IP(src="10.2.27.10", dst="10.0.1.4") / TCP(sport=40000, dport=8080, flags="PA") / Raw(b"g" * 90)),
                bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=8080) / Raw(b"u" * 41))]
        body = b"".join(bytes([16, 16, 0]) + chunk(p) for p in transport_packets(cfg, pkts))
        s[f"transport-decap-{cfg:02x}"] = bytes([cfg, 2]) + struct.pack("!I", 0) + bytes([len(pkts) - 1]) + body
        body = b"".join(bytes([24, 64, 0]) + chunk(p) for p in pkts)
        s[f"transport-roundtrip-{cfg:02x}"] = bytes([cfg, 3]) + struct.pack("!I", 7) + bytes([1]) + body
    for cfg in (0x00, 0x01, 0x02, 0x03 | 0x04, 0x03 | 0x10 | 0x20, 0x40 | 0x10, 0x03 | 0x0C | 0x40, 0x80, 0x80 | 0x04 | 0x30):
        pkts = esp_packets(cfg, tcp_run(3, 200) + [bytes(IP() / UDP() / Raw(b"x"))])
        body = b"".join(bytes([16, 16, 0]) + chunk(p) for p in pkts)
        s[f"decap-{cfg:02x}"] = bytes([cfg, 0]) + struct.pack("!I", 0) + bytes([len(pkts) - 1]) + body
        inner = tcp_run(2, 100)
        body = b"".join(bytes([24, 64, 4]) + chunk(p) for p in inner)
        s[f"roundtrip-{cfg:02x}"] = bytes([cfg, 1]) + struct.pack("!I", 0xFFFFFFF0) + bytes([1]) + body
    return s


def macsec_frames(cfg: int, frames: Iterable[bytes], an: int = 0) -> list[bytes]:
    cipher = CIPHERS[cfg & 3]
    xpn = cipher.startswith("gcm-aes-xpn")
    secy = SecYConfig(include_sci=bool(cfg & 4), end_station=bool(cfg & 8), confidentiality=not cfg & 16,
                      replay_window=4096 if cfg & 128 else 64, validate=VALIDATE[(cfg >> 5) & 3])
    sak = ENC_KEY[:16 if cipher.endswith("128") else 32]
    sa = MacsecSaConfig(cipher=cipher, sak=sak, sci=SCI, an=an, ssci=1 if xpn else None,
                        salt=SALT if xpn else None)
    tx = MacsecTx(secy, sa)
    res = []
    for f in frames:
        verdict, out = tx.protect(f)
        assert verdict.name == "OK", verdict
        res.append(out)
    return res


def eth(pkt: bytes, v6: bool = False) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD if v6 else 0x0800)) + pkt


def seeds_macsec() -> dict[str, bytes]:
    s = {}
    for cfg in (0x04, 0x05, 0x06 | 0x20, 0x07 | 0x80, 0x04 | 0x10, 0x00, 0x08 | 0x40):
        frames = [eth(p) for p in tcp_run(2, 300)] + [eth(bytes(IPv6() / UDP()), v6=True)]
        body = b"".join(bytes([16, 16]) + chunk(f) for f in macsec_frames(cfg, frames))
        s[f"validate-{cfg:02x}"] = bytes([cfg, 0, 0]) + struct.pack("!I", 1) + bytes([0, len(frames) - 1]) + body
        body = b"".join(bytes([16, 16]) + chunk(f) for f in frames)
        s[f"roundtrip-{cfg:02x}"] = bytes([cfg, 1, 1]) + struct.pack("!I", 5) + bytes([0, len(frames) - 1]) + body
    return s


def seeds_offload() -> dict[str, bytes]:
    s = {}
    for name, l2, pkt, gso in (("v4", 0, super_packet(), VNET_GSO_TCPV4), ("v6", 0, super_packet(v6=True), VNET_GSO_TCPV6),
                               ("eth-v4", 1, eth(super_packet()), VNET_GSO_TCPV4),
                               ("eth-v6", 1, eth(super_packet(v6=True), v6=True), VNET_GSO_TCPV6)):
        s[f"tso-{name}"] = bytes([0, l2, gso]) + u16(1000) + u16(1500) + chunk(pkt)
    run = tcp_run(5, 500) + [bytes(IP() / UDP() / Raw(b"u"))] + tcp_run(3, 500, v6=True)
    s["gro-tun"] = bytes([1, len(run), 0]) + b"".join(bytes([0]) + chunk(p) for p in run)
    run = [eth(p) for p in tcp_run(4, 600)] + [bytes(Ether(dst="02:00:00:00:00:02") / Dot1Q() / IP() / TCP())]
    s["gro-eth"] = bytes([1, len(run), 1]) + b"".join(bytes([0]) + chunk(p) for p in run)
    udp = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"abcdef"))
    s["csum-udp"] = bytes([2]) + u16(20) + u16(6) + chunk(udp)
    return s


def train(inner: list[bytes]) -> bytes:
    """An encap message of fuzz_loop: count, then the inner packets as (len % 9000) chunks."""
    return bytes([len(inner) - 1]) + b"".join(chunk(p) for p in inner)


def seeds_loop() -> dict[str, bytes]:
    s = {}
    ike = b"\0\0\0\0" + bytes(28)
    for flags in (0x00, 0x01, 0x03, 0x13, 0x04, 0x08 | 0x01):
        ops = b""
        ops += bytes([0]) + u16(1) + bytes([2]) + train(tcp_run(4, 700))           # a GRO train, coalesced
        ops += bytes([0]) + u16(0) + bytes([2]) + train([bytes(IP() / UDP() / Raw(b"d"))])
        ops += bytes([0]) + u16(0) + bytes([0]) + chunk(ike)                       # IKE: no ike_fd, dropped
        ops += bytes([0]) + u16(0) + bytes([0]) + chunk(b"\xff")                   # NAT keepalive
        ops += bytes([0]) + u16(0) + bytes([1]) + chunk(bytes(60))                 # truncated
        reads = [vnet_hdr(VNET_GSO_TCPV4, 1000, 40) + super_packet(), vnet_hdr(csum=(20, 6)) + bytes(IP() / UDP() / Raw(b"q"))] \
            if flags & 1 else tcp_run(3, 800)
        ops += bytes([1, len(reads) - 1]) + b"".join(chunk(r) for r in reads)
        s[f"loop-{flags:02x}"] = bytes([flags, 0x00, 8]) + ops
    return s


def seeds_mloop() -> dict[str, bytes]:
    s = {}
    for flags in (0x00, 0x01, 0x02, 0x05, 0x08):
        for mcfg in (0x04, 0x07 | 0x20):
            ops = b""
            for f in [eth(p) for p in tcp_run(3, 600)] + [eth(bytes(IPv6() / UDP()), v6=True)]:
                ops += bytes([0, 4 | 8]) + chunk(f)                               # protected by the peer
            ops += bytes([0, 0]) + chunk(bytes(Ether(dst="01:80:c2:00:00:03", type=0x888E)) + bytes(40))      # EAPOL
            ops += bytes([0, 0]) + chunk(eth(bytes(IP() / UDP())))                   # unprotected
            ops += bytes([0, 1]) + chunk(eth(bytes(IP() / UDP())))                   # our own
            reads = [vnet_hdr(VNET_GSO_TCPV4, 1000, 54) + eth(super_packet())] if flags & 1 else [eth(p) for p in tcp_run(2, 500)]
            ops += bytes([1, len(reads) - 1]) + b"".join(chunk(r) for r in reads)
            s[f"mloop-{flags:02x}-{mcfg:02x}"] = bytes([flags, mcfg, 0]) + u16(1514 - 60) + bytes([8]) + ops
    return s


TARGETS = {"fuzz_esp": seeds_esp, "fuzz_macsec": seeds_macsec, "fuzz_offload": seeds_offload,
           "fuzz_loop": seeds_loop, "fuzz_mloop": seeds_mloop}


def main() -> None:
    for target, make in TARGETS.items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (d / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(list(d.iterdir()))} inputs", hashlib.sha256(b"".join(
            p.read_bytes() for p in sorted(d.iterdir()))).hexdigest()[:12])


if __name__ == "__main__":
    main()
