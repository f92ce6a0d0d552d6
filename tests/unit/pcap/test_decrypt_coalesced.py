"""``pcap decrypt`` on a frame holding several ESP-in-UDP datagrams merged by UDP GRO (what tcpdump
sees on the receiving end of a veth): the frame is split like ``lab audit`` splits it (one splitter,
:mod:`ipsecemu.pcap.coalesced`) and each datagram decrypted, instead of one "ICV failure"."""

from __future__ import annotations

import os
from pathlib import Path

from scapy.layers.inet import ICMP, IP, UDP
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
    assert "GRO-merged frames split: 1" in s.line()


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
