"""``lab audit`` verdicts from crafted captures: frames built with scapy, ESP sealed by the project's
reference transform (and MACsec by the data plane), keys in Wireshark's esp_sa form, as a lab exports
them.  Encrypted needs the marker found after decryption; clear wins over everything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw
from scapy.utils import RawPcapWriter

from ipsecemu.base.algorithms import MACSEC_CIPHERS
from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.dataplane import backend
from ipsecemu.esp import framing
from ipsecemu.lab.audit_classify import (
    BLOCKED,
    CLEAR,
    ENCRYPTED,
    NOT_DELIVERED,
    NOT_OBSERVED,
    LinkEvidence,
    scan_capture,
    split_coalesced,
    verdict,
)
from ipsecemu.pcap.uat import esp_row

REF = backend("reference")
GCM_KEY = bytes(range(16)) + b"\xca\xfe\xba\xbe"
IKE_A, IKE_B = "172.24.127.211", "10.51.230.4"  # the er-vwan tunnel ends
ONPREM1, SPOKE1 = "10.0.1.10", "10.51.231.4"


def eth(ip: bytes) -> bytes:
    return raw(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b", type=0x0800) / Raw(ip))


def write_pcap(path: Path, frames: list[bytes]) -> Path:
    with RawPcapWriter(str(path), linktype=1, sync=True) as w:
        w.write_header(None)
        for i, f in enumerate(frames):
            w.write_packet(f, sec=1700000000 + i, usec=0)
    return path


def ping(marker: bytes, src: str = ONPREM1, dst: str = SPOKE1) -> bytes:
    """An echo request as ``ping -s 64 -p MARKER`` sends it: a timestamp, then the repeated pattern."""
    return raw(IP(src=src, dst=dst) / ICMP(id=7, seq=1) / Raw(os.urandom(16) + marker * 3))


def esp_frames(inners: list[bytes], spi: int = 0xC0FFEE01) -> tuple[list[bytes], EspSaConfig]:
    cfg = EspSaConfig(spi=spi, encr="aes-gcm-16", enc_key=GCM_KEY)
    tx = REF.EspOutbound(cfg)
    out = []
    for pkt in inners:
        v, esp = tx.encap(pkt, framing.inner_next_header(pkt))
        assert v == Verdict.OK
        out.append(eth(framing.frame_tunnel(esp, IKE_A, IKE_B, udp_ports=(4500, 4500))))
    return out, cfg


def row(cfg: EspSaConfig):  # type: ignore[no-untyped-def]
    return esp_row(IKE_A, IKE_B, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key)


def test_encrypted_proven_by_decrypting(tmp_path: Path) -> None:
    m = os.urandom(16)
    frames, cfg = esp_frames([ping(m), ping(m)])
    assert all(m not in f for f in frames)  # nothing to see without the key
    st = scan_capture(write_pcap(tmp_path / "c.pcap", frames), [m], [row(cfg)])
    assert st.hits[m].as_dict() == {"clear": 0, "encrypted": 2}
    assert (st.frames, st.decrypted, st.no_key) == (2, 2, 0)
    assert verdict(True, [st.hits[m]]) == ENCRYPTED


def test_esp_without_its_key_proves_nothing(tmp_path: Path) -> None:
    m = os.urandom(16)
    frames, _cfg = esp_frames([ping(m)])
    _f, other_cfg = esp_frames([], spi=0x1234)
    st = scan_capture(write_pcap(tmp_path / "c.pcap", frames), [m], [row(other_cfg)])
    assert st.hits[m].as_dict() == {"clear": 0, "encrypted": 0}
    assert st.no_key == 1
    assert verdict(True, [st.hits[m]]) == NOT_OBSERVED  # delivered, but not proven encrypted
    assert verdict(False, [st.hits[m]]) == BLOCKED


def test_clear_wins_even_when_the_other_way_is_encrypted(tmp_path: Path) -> None:
    """S3: the request rides the tunnel, the echo reply crosses ER in clear with the same pattern."""
    m = os.urandom(16)
    enc, cfg = esp_frames([ping(m)])
    reply = eth(raw(IP(src=SPOKE1, dst=ONPREM1) / ICMP(type=0, id=7, seq=1) / Raw(os.urandom(16) + m * 3)))
    st = scan_capture(write_pcap(tmp_path / "c.pcap", [*enc, reply]), [m], [row(cfg)])
    assert st.hits[m].as_dict() == {"clear": 1, "encrypted": 1}
    assert verdict(True, [st.hits[m]]) == CLEAR
    assert verdict(False, [LinkEvidence(), st.hits[m]]) == CLEAR  # leaked, delivered or not


def test_blocked_and_not_delivered(tmp_path: Path) -> None:
    m, other = os.urandom(16), os.urandom(16)
    unrelated = eth(raw(IP(src=ONPREM1, dst=SPOKE1) / TCP(dport=8080) / Raw(other)))
    enc, cfg = esp_frames([ping(m)])
    st = scan_capture(write_pcap(tmp_path / "c.pcap", [unrelated]), [m, other], [row(cfg)])
    assert st.hits[m].as_dict() == {"clear": 0, "encrypted": 0}
    assert st.hits[other].clear == 1
    assert verdict(False, [st.hits[m]]) == BLOCKED  # never on the untrusted link, not delivered
    st = scan_capture(write_pcap(tmp_path / "d.pcap", enc), [m], [row(cfg)])
    assert verdict(False, [st.hits[m]]) == NOT_DELIVERED  # went into the tunnel, never answered


def test_markers_are_told_apart(tmp_path: Path) -> None:
    m1, m2 = os.urandom(16), os.urandom(16)
    enc, cfg = esp_frames([ping(m1)])
    clear = eth(ping(m2, "10.0.2.10"))
    st = scan_capture(write_pcap(tmp_path / "c.pcap", [*enc, clear]), [m1, m2], [row(cfg)])
    assert st.hits[m1].as_dict() == {"clear": 0, "encrypted": 1}
    assert st.hits[m2].as_dict() == {"clear": 1, "encrypted": 0}


@pytest.mark.parametrize("with_esp", [False, True])
def test_macsec_link(tmp_path: Path, with_esp: bool) -> None:
    """ExpressRoute Direct: MACsec on the wire (ESP inside it, or the clear ER path inside it)."""
    m = os.urandom(16)
    cipher = "gcm-aes-xpn-256"
    keylen, xpn = MACSEC_CIPHERS[cipher]
    sa = MacsecSaConfig(cipher=cipher, sak=bytes(range(1, keylen + 1)), sci=bytes.fromhex("020000000a0a0005"),
                        an=1, ssci=7 if xpn else None, salt=bytes(range(12)) if xpn else None)
    tx = REF.MacsecTx(SecYConfig(), sa)
    if with_esp:
        inner, cfg = esp_frames([ping(m)])
        rows = [row(cfg)]
    else:
        inner, rows = [eth(ping(m, "10.0.2.10"))], []
    wire = [tx.protect(f)[1] for f in inner]
    assert m not in wire[0]
    st = scan_capture(write_pcap(tmp_path / "c.pcap", wire), [m], rows, [sa])
    assert st.hits[m].as_dict() == {"clear": 0, "encrypted": 1}
    assert verdict(True, [st.hits[m]]) == ENCRYPTED
    st = scan_capture(tmp_path / "c.pcap", [m], rows)  # without the MACsec key: nothing proven
    assert verdict(True, [st.hits[m]]) == NOT_OBSERVED


def test_datagrams_merged_by_gro_are_split(tmp_path: Path) -> None:
    """tcpdump on the receiving veth sees UDP GRO's merged packet: several ESP datagrams of one SA
    under one UDP header (seen live: an ACK of 88 bytes + the echoed data of 104).  The audit cuts
    it where the SPI returns with the next sequence number and decrypts each part."""
    m = os.urandom(16)
    frames, cfg = esp_frames([ping(os.urandom(16)), raw(IP(src=SPOKE1, dst=ONPREM1) / TCP(sport=8080) / Raw(m))])
    datagrams = [f[14 + 20 + 8:] for f in frames]
    merged = eth(raw(IP(src=IKE_A, dst=IKE_B) / UDP(sport=4500, dport=4500) / Raw(b"".join(datagrams))))
    assert len(split_coalesced(merged)) == 2
    st = scan_capture(write_pcap(tmp_path / "c.pcap", [merged]), [m], [row(cfg)])
    assert (st.frames, st.coalesced, st.failed) == (1, 1, 0)
    assert st.hits[m].as_dict() == {"clear": 0, "encrypted": 1}
    assert split_coalesced(frames[0]) == []  # a lone datagram stays as it is
