"""``pcap decrypt`` on a frame holding several ESP-in-UDP datagrams merged by UDP GRO (what tcpdump
sees on the receiving end of a veth): the frame is split like ``lab audit`` splits it (one splitter,
:mod:`ipsecemu.pcap.coalesced`) and each datagram decrypted, instead of one "ICV failure"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw
from scapy.utils import RawPcapWriter

from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.dataplane import backend
from ipsecemu.esp import framing
from ipsecemu.lab import audit_classify
from ipsecemu.pcap import coalesced
from ipsecemu.pcap.decrypt import decrypt_file
from ipsecemu.pcap.pcapfile import read_capture
from ipsecemu.pcap.uat import esp_row

REF = backend("reference")
KEY = bytes(range(16)) + b"\xca\xfe\xba\xbe"
A, B = "172.24.127.211", "10.51.230.4"


def eth(ip: bytes) -> bytes:
    return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b", type=0x0800) / Raw(ip))


def sealed(n: int) -> tuple[list[bytes], list[bytes], EspSaConfig]:
    """n echo requests and their ESP-in-UDP frames of one SA (sequence numbers 1..n)."""
    cfg = EspSaConfig(spi=0xC0FFEE01, encr="aes-gcm-16", enc_key=KEY)
    tx = REF.EspOutbound(cfg)
    inner, frames = [], []
    for i in range(n):
        pkt = raw(IP(src="10.0.1.10", dst="10.51.231.4") / ICMP(id=7, seq=i) / Raw(os.urandom(24)))
        v, esp = tx.encap(pkt, framing.inner_next_header(pkt))
        assert v == Verdict.OK
        inner.append(pkt)
        frames.append(eth(framing.frame_tunnel(esp, A, B, udp_ports=(4500, 4500))))
    return inner, frames, cfg


def write(path: Path, frames: list[bytes]) -> Path:
    with RawPcapWriter(str(path), linktype=1, sync=True) as w:
        w.write_header(None)
        for i, f in enumerate(frames):
            w.write_packet(f, sec=1700000000 + i, usec=0)
    return path


def test_gro_merged_frame_is_split_and_each_datagram_decrypted(tmp_path: Path) -> None:
    inner, frames, cfg = sealed(4)
    datagrams = [f[14 + 20 + 8:] for f in frames[1:]]  # the last three arrive as one GRO train
    merged = eth(raw(IP(src=A, dst=B) / UDP(sport=4500, dport=4500) / Raw(b"".join(datagrams))))
    rows = [esp_row(A, B, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key)]
    s = decrypt_file(write(tmp_path / "in.pcap", [frames[0], merged]), tmp_path / "out.pcap", rows)
    assert (s.frames, s.failed, s.failures, s.coalesced) == (2, 0, [], 1)
    assert s.decrypted == 4 and s.written == 4  # the parts count one by one
    got = [r.data[14:] for r in read_capture(tmp_path / "out.pcap")[2]]
    assert got == inner  # every datagram decrypted to its own packet, in order
    assert "GSO/GRO-merged frames split: 1" in s.line()


def test_a_really_corrupt_frame_is_still_a_failure(tmp_path: Path) -> None:
    _, frames, cfg = sealed(2)
    bad = bytearray(frames[1])
    bad[-1] ^= 1  # the ICV
    rows = [esp_row(A, B, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key)]
    s = decrypt_file(write(tmp_path / "in.pcap", [frames[0], bytes(bad)]), tmp_path / "out.pcap", rows)
    assert (s.decrypted, s.failed, s.coalesced) == (1, 1, 0)
    assert [f.frame for f in s.failures] == [2]


def test_one_splitter_for_audit_and_decrypt() -> None:
    assert audit_classify.split_coalesced is coalesced.split_coalesced


A6, B6 = "fd00:192::1", "fd00:192::2"


def _train(n: int, v6: bool) -> tuple[list[bytes], bytes, EspSaConfig, str, str]:
    """n inner packets and one IP packet holding their ESP-in-UDP datagrams back to back (a UDP GSO
    train as tcpdump sees it on the sending veth, or a GRO merge on the receiving one)."""
    src, dst = (A6, B6) if v6 else (A, B)
    inner, frames, cfg = sealed(n)
    datagrams = [f[14 + 20 + 8:] for f in frames]
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return inner, raw(ip / UDP(sport=4500, dport=4500) / Raw(b"".join(datagrams))), cfg, src, dst


def _link(ip: bytes, linktype: int) -> bytes:
    v6 = ip[0] >> 4 == 6
    if linktype == 1:
        return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b", type=0x86DD if v6 else 0x0800) / Raw(ip))
    if linktype == 113:  # Linux cooked v1 (tcpdump -i any): protocol at 14
        return bytes(2) + (1).to_bytes(2, "big") + (6).to_bytes(2, "big") + bytes(8) + (0x86DD if v6 else 0x0800).to_bytes(2, "big") + ip
    return ip  # 101: raw IP


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("linktype", [1, 113, 101], ids=["ethernet", "sll", "raw"])
def test_gso_train_is_split_on_every_underlay_and_link_type(tmp_path: Path, v6: bool, linktype: int) -> None:
    """Seen on CI: over an IPv6 underlay the audit's TCP echo left as a 2-datagram GSO train (the data
    segment and the FIN); the IPv4-only splitter left it an ICV failure and the flow 'not observed'."""
    inner, ip, cfg, src, dst = _train(3, v6)
    frame = _link(ip, linktype)
    parts = coalesced.split_coalesced(frame, linktype)
    assert len(parts) == 3
    off = len(frame) - len(ip)
    for p in parts:  # each part is a well-formed packet of its own: lengths fixed for the parser
        pkt = IPv6(p[off:]) if v6 else IP(p[off:])
        assert pkt[UDP].len == len(p) - off - (40 if v6 else 20)
        assert (IPv6 if v6 else IP) in pkt and pkt.src == src
    rows = [esp_row(src, dst, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key)]
    path = tmp_path / "in.pcap"
    with RawPcapWriter(str(path), linktype=linktype, sync=True) as w:
        w.write_header(None)
        w.write_packet(frame, sec=1700000000, usec=0)
    s = decrypt_file(path, tmp_path / "out.pcap", rows)
    assert (s.frames, s.failed, s.coalesced, s.decrypted) == (1, 0, 1, 3), s.failures
    got = [r.data[off:] for r in read_capture(tmp_path / "out.pcap")[2]]
    assert got == inner


def test_splitter_leaves_other_frames_alone() -> None:
    _, ip, _, _, _ = _train(1, True)
    assert coalesced.split_coalesced(_link(ip, 1), 1) == []  # one datagram: nothing to cut
    ike = raw(IPv6(src=A6, dst=B6) / UDP(sport=4500, dport=4500) / Raw(bytes(4) + os.urandom(60)))
    assert coalesced.split_coalesced(_link(ike, 1), 1) == []  # non-ESP marker: IKE
    assert coalesced.split_coalesced(b"\x00" * 10, 1) == []  # truncated
    assert coalesced.split_coalesced(_link(ip, 1), 228) == []  # an Ethernet frame read as raw IP: not IP
