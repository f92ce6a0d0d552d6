"""Round trips through `ipsecemu pcap decrypt`: captures built with scapy whose frames are
encrypted by the real transforms (and by scapy's SecurityAssociation / MACsecSA as the
independent side) decrypt back to the original packets."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from scapy.contrib.macsec import MACsecSA
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw, raw
from scapy.utils import RawPcapReader, RawPcapWriter

from ipsecemu.base.algorithms import MACSEC_CIPHERS
from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.cli import cli
from ipsecemu.dataplane import backend
from ipsecemu.esp import framing
from ipsecemu.pcap.macsec_sa import write_macsec_sa
from ipsecemu.pcap.uat import esp_row, write_esp_sa

BE = backend("auto")
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
GCM_KEY = bytes(range(16)) + b"\xca\xfe\xba\xbe"
CBC_KEY, HMAC_KEY = bytes(range(32)), bytes(range(100, 132))


def inner_packets(v6: bool = False, n: int = 4) -> list[bytes]:
    if v6:
        return [raw(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / UDP(sport=1000 + i, dport=53) / Raw(b"q" * (10 + i)))
                for i in range(n)]
    return [raw(IP(src="10.1.0.1", dst="10.2.0.1", id=i) / ICMP(seq=i) / Raw(b"x" * (20 + 7 * i))) for i in range(n)]


def eth(ip: bytes) -> bytes:
    etype = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    return raw(Ether(src=MAC_A, dst=MAC_B, type=etype) / Raw(ip))


def write_pcap(path: Path, frames: list[bytes], linktype: int = 1) -> None:
    with RawPcapWriter(str(path), linktype=linktype, sync=True) as w:
        w.write_header(None)
        for i, f in enumerate(frames):
            w.write_packet(f, sec=1700000000 + i, usec=1000 * i)


def read_pcap(path: Path) -> tuple[int, list[bytes], list[tuple[int, int]]]:
    with RawPcapReader(str(path)) as r:
        items = list(r)
        return r.linktype, [d for d, _ in items], [(m.sec, m.usec) for _, m in items]


def run(tmp_path: Path, frames: list[bytes], *, esp=(), macsec=(), extra: tuple[str, ...] = (),
        linktype: int = 1) -> tuple[Result, list[bytes], int]:
    cap, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(cap, frames, linktype)
    args = ["pcap", "decrypt", str(cap), "-o", str(out), *extra]
    if esp:
        write_esp_sa(tmp_path / "esp_sa", list(esp))
        args += ["--esp-sa", str(tmp_path / "esp_sa")]
    if macsec:
        write_macsec_sa(tmp_path / "macsec.json", list(macsec))
        args += ["--macsec-sa", str(tmp_path / "macsec.json")]
    result = CliRunner().invoke(cli, args)
    lt, out_frames, stamps = read_pcap(out) if out.exists() else (0, [], [])
    if len(out_frames) == len(frames):  # nothing left out: every timestamp is the input's
        assert stamps == [(1700000000 + i, 1000 * i) for i in range(len(frames))]
    return result, out_frames, lt


# ------------------------------------------------------------------ ESP, our transforms
ESP_CASES = {
    # name: (cfg kwargs, outer addresses, udp ports, mode, inner v6)
    "gcm-raw-v4": (dict(encr="aes-gcm-16", enc_key=GCM_KEY), ("192.0.2.1", "192.0.2.2"), None, "tunnel", False),
    "cbc-udp4500": (dict(encr="aes-cbc", enc_key=CBC_KEY, integ="hmac-sha256-128", integ_key=HMAC_KEY),
                    ("192.0.2.1", "192.0.2.2"), (4500, 4500), "tunnel", False),
    "gcm-v6-outer": (dict(encr="aes-gcm-16", enc_key=GCM_KEY), ("2001:db8::1", "2001:db8::2"), None, "tunnel", True),
    "gcm-v6-outer-v4-inner": (dict(encr="aes-gcm-12", enc_key=GCM_KEY), ("2001:db8::1", "2001:db8::2"), None,
                              "tunnel", False),
    "cbc-sha1-transport": (dict(encr="aes-cbc", enc_key=CBC_KEY[:16], integ="hmac-sha1-96", integ_key=HMAC_KEY[:20]),
                           None, None, "transport", False),
    "gcm-transport-udp": (dict(encr="aes-gcm-16", enc_key=GCM_KEY), None, (4500, 4500), "transport", False),
    "3des-md5": (dict(encr="3des-cbc", enc_key=bytes(range(24)), integ="hmac-md5-96", integ_key=bytes(16)),
                 ("192.0.2.1", "192.0.2.2"), None, "tunnel", False),
    "null-sha256": (dict(encr="null", enc_key=b"", integ="hmac-sha256-128", integ_key=HMAC_KEY),
                    ("192.0.2.1", "192.0.2.2"), None, "tunnel", False),
    "chacha": (dict(encr="chacha20-poly1305", enc_key=bytes(36)), ("192.0.2.1", "192.0.2.2"), None, "tunnel", False),
}


def encrypt_esp(cfg: EspSaConfig, outer: tuple[str, str] | None, udp: tuple[int, int] | None, mode: str,
                inners: list[bytes], tx=None) -> list[bytes]:
    tx = tx or BE.EspOutbound(cfg)
    frames = []
    for pkt in inners:
        if mode == "tunnel":
            verdict, esp = tx.encap(pkt, framing.inner_next_header(pkt))
            assert verdict == Verdict.OK
            frames.append(eth(framing.frame_tunnel(esp, *outer, udp_ports=udp)))
        else:
            header, proto, data = framing.split_transport(pkt)
            verdict, esp = tx.encap(data, proto)
            assert verdict == Verdict.OK
            frames.append(eth(framing.join_transport(header, esp, udp_ports=udp)))
    return frames


def row_for(cfg: EspSaConfig, outer: tuple[str, str] | None, v6: bool):
    src, dst = outer or (("2001:db8:1::1", "2001:db8:2::1") if v6 else ("10.1.0.1", "10.2.0.1"))
    return esp_row(src, dst, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key)


@pytest.mark.parametrize("be", ["auto", "reference"])
@pytest.mark.parametrize("case", list(ESP_CASES))
def test_esp_round_trip(tmp_path: Path, case: str, be: str) -> None:
    kw, outer, udp, mode, v6 = ESP_CASES[case]
    cfg = EspSaConfig(spi=0x1000 + len(case), **kw)
    inners = inner_packets(v6)
    frames = encrypt_esp(cfg, outer, udp, mode, inners)
    if case == "chacha":  # tshark 4.0 has no ChaCha20 string, but ipsecemu reads the newer one
        assert row_for(cfg, outer, v6).encryption == "ChaCha20 with Poly1305 [RFC7634]"
    result, out, lt = run(tmp_path, frames, esp=[row_for(cfg, outer, v6)], extra=("--backend", be))
    assert result.exit_code == 0, result.output
    assert f"decrypted: {len(inners)} (ESP layers: {len(inners)}" in result.output
    assert lt == 1
    assert out == [eth(p) for p in inners]


def test_esp_retransmits_and_reordering_decrypt(tmp_path: Path) -> None:
    kw, outer, udp, mode, v6 = ESP_CASES["gcm-raw-v4"]
    cfg = EspSaConfig(spi=0x2000, **kw)
    inners = inner_packets(n=5)
    frames = encrypt_esp(cfg, outer, udp, mode, inners)
    order = [4, 0, 0, 3, 1, 2, 2, 4]  # reversed, duplicated: a capture keeps them all
    result, out, _ = run(tmp_path, [frames[i] for i in order], esp=[row_for(cfg, outer, v6)])
    assert result.exit_code == 0, result.output
    assert out == [eth(inners[i]) for i in order]


def test_esn_sequence_numbers_across_2_32(tmp_path: Path) -> None:
    """ESN is not in the key file: the decryptor finds it and infers seq_hi across the wrap."""
    cfg = EspSaConfig(spi=0x3000, encr="aes-cbc", enc_key=CBC_KEY, integ="hmac-sha256-128", integ_key=HMAC_KEY,
                      esn=True)
    tx = backend("reference").EspOutbound(cfg, initial_seq=(1 << 32) - 3)
    inners = inner_packets(n=6)
    frames = encrypt_esp(cfg, ("192.0.2.1", "192.0.2.2"), None, "tunnel", inners, tx=tx)
    assert tx.next_seq == (1 << 32) + 3
    result, out, _ = run(tmp_path, frames, esp=[row_for(cfg, ("192.0.2.1", "192.0.2.2"), False)])
    assert result.exit_code == 0, result.output
    assert out == [eth(p) for p in inners]


def test_esn_aead_wrapped_capture(tmp_path: Path) -> None:
    cfg = EspSaConfig(spi=0x3001, encr="aes-gcm-16", enc_key=GCM_KEY, esn=True)
    tx = backend("reference").EspOutbound(cfg, initial_seq=(1 << 32) - 2)
    inners = inner_packets(n=4)
    frames = encrypt_esp(cfg, ("192.0.2.1", "192.0.2.2"), None, "tunnel", inners, tx=tx)
    result, out, _ = run(tmp_path, frames, esp=[row_for(cfg, ("192.0.2.1", "192.0.2.2"), False)])
    assert result.exit_code == 0, result.output
    assert out == [eth(p) for p in inners]


def test_flipped_bit_is_reported_by_frame_number(tmp_path: Path) -> None:
    kw, outer, udp, mode, v6 = ESP_CASES["cbc-udp4500"]
    cfg = EspSaConfig(spi=0x4000, **kw)
    inners = inner_packets(n=5)
    frames = encrypt_esp(cfg, outer, udp, mode, inners)
    bad = bytearray(frames[2])
    bad[-20] ^= 0x04
    frames[2] = bytes(bad)
    other = raw(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.9.9.9", dst="10.9.9.8") / TCP(dport=80))
    frames.insert(1, other)  # frame 2: not ESP, copied through
    row = row_for(cfg, outer, v6)
    result, out, _ = run(tmp_path, frames, esp=[row])
    assert result.exit_code == 9  # CheckFailed
    assert "frame 4: ESP SPI 0x00004000 seq 3 (192.0.2.1 -> 192.0.2.2): authentication failed" in result.output
    assert "frames read: 6, decrypted: 4 (ESP layers: 4, MACsec layers: 0), failed: 1, passed through: 1" \
        in result.output
    assert out == [eth(inners[0]), other, eth(inners[1]), eth(inners[3]), eth(inners[4])]
    result, out2, _ = run(tmp_path, frames, esp=[row], extra=("--allow-failures",))
    assert result.exit_code == 0
    assert "failed: 1" in result.output and out2 == out


def test_vlan_tagged_esp_keeps_tag(tmp_path: Path) -> None:
    kw, outer, udp, mode, v6 = ESP_CASES["gcm-raw-v4"]
    cfg = EspSaConfig(spi=0x5000, **kw)
    tx = BE.EspOutbound(cfg)
    inner = inner_packets(n=1)[0]
    _, esp = tx.encap(inner, 4)
    frame = raw(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42) / IP(raw(framing.frame_tunnel(esp, *outer))))
    result, out, _ = run(tmp_path, [frame], esp=[row_for(cfg, outer, v6)])
    assert result.exit_code == 0, result.output
    assert out == [raw(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42) / IP(inner))]


def test_raw_ip_linktypes(tmp_path: Path) -> None:
    """Raw-IP captures (linktype 101 and 228): the output is raw IP (101) holding the inner packet."""
    kw, outer, udp, mode, v6 = ESP_CASES["gcm-raw-v4"]
    cfg = EspSaConfig(spi=0x5001, **kw)
    inners = inner_packets(n=2)
    frames = [f[14:] for f in encrypt_esp(cfg, outer, udp, mode, inners)]
    for lt_in in (101, 228):
        result, out, lt = run(tmp_path, frames, esp=[row_for(cfg, outer, v6)], linktype=lt_in)
        assert result.exit_code == 0, result.output
        assert (lt, out) == (101, inners)


# ------------------------------------------------------------------ ESP, scapy as the encryptor
SCAPY_CASES = {
    "gcm-tunnel-v4": ("AES-GCM", GCM_KEY, None, b"", "aes-gcm-16", None, False, True),
    "cbc-sha256-tunnel-v6": ("AES-CBC", CBC_KEY, "SHA2-256-128", HMAC_KEY, "aes-cbc", "hmac-sha256-128", True, True),
    "cbc-sha1-transport-v4": ("AES-CBC", CBC_KEY[:16], "HMAC-SHA1-96", HMAC_KEY[:20], "aes-cbc", "hmac-sha1-96",
                              False, False),
    "3des-md5-transport-v6": ("3DES", bytes(range(24)), "HMAC-MD5-96", bytes(16), "3des-cbc", "hmac-md5-96",
                              True, False),
}


@pytest.mark.parametrize("case", list(SCAPY_CASES))
def test_scapy_encrypted_esp_decrypts(tmp_path: Path, case: str) -> None:
    crypt, ckey, auth, akey, encr, integ, v6, tunnel = SCAPY_CASES[case]
    outer = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    hdr = None
    if tunnel:
        hdr = IPv6(src=outer[0], dst=outer[1]) if v6 else IP(src=outer[0], dst=outer[1])
    sa = SecurityAssociation(ESP, spi=0x6000, crypt_algo=crypt, crypt_key=ckey, auth_algo=auth, auth_key=akey or None,
                             tunnel_header=hdr)
    inners = inner_packets(v6)
    frames = []
    for p in inners:
        pkt = IPv6(p) if v6 else IP(p)
        frames.append(eth(raw(sa.encrypt(pkt))))
    src, dst = outer if tunnel else ((IPv6 if v6 else IP)(inners[0]).src, (IPv6 if v6 else IP)(inners[0]).dst)
    row = esp_row(src, dst, 0x6000, encr, ckey, integ, akey)
    result, out, _ = run(tmp_path, frames, esp=[row])
    assert result.exit_code == 0, result.output
    if tunnel:
        assert out == [eth(p) for p in inners]
    else:  # transport: scapy leaves the IP header as it was except protocol/length/checksum
        assert [o[14:] for o in out] == [raw((IPv6 if v6 else IP)(p)) for p in inners]


# ------------------------------------------------------------------ MACsec
SCI_EXPLICIT = bytes.fromhex("020000000a0a0005")
SCI_IMPLICIT = bytes.fromhex("02000000000a0001")  # source MAC | port 1 when the SecTAG has no SCI
SALT = bytes(range(0xA0, 0xAC))


def macsec_sa(cipher: str, sci: bytes, next_pn: int = 1) -> MacsecSaConfig:
    keylen, xpn = MACSEC_CIPHERS[cipher]
    return MacsecSaConfig(cipher=cipher, sak=bytes(range(1, keylen + 1)), sci=sci, an=2,
                          ssci=7 if xpn else None, salt=SALT if xpn else None, next_pn=next_pn)


def plain_frames(n: int = 4) -> list[bytes]:
    return [raw(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=9) / Raw(b"m" * (3 + 30 * i)))
            for i in range(n)]


@pytest.mark.parametrize("be", ["auto", "reference"])
@pytest.mark.parametrize("cipher", list(MACSEC_CIPHERS))
@pytest.mark.parametrize("include_sci", [True, False])
def test_macsec_round_trip(tmp_path: Path, cipher: str, include_sci: bool, be: str) -> None:
    xpn = MACSEC_CIPHERS[cipher][1]
    sa = macsec_sa(cipher, SCI_EXPLICIT if include_sci else SCI_IMPLICIT, next_pn=(1 << 32) - 2 if xpn else 1)
    tx = BE.MacsecTx(SecYConfig(include_sci=include_sci), sa)
    plain = plain_frames()
    frames = []
    for f in plain:
        verdict, wire = tx.protect(f)
        assert verdict == Verdict.OK
        frames.append(wire)
    result, out, _ = run(tmp_path, frames, macsec=[sa], extra=("--backend", be))
    assert result.exit_code == 0, result.output
    assert "MACsec layers: 4" in result.output
    assert out == plain


@pytest.mark.parametrize("cipher", list(MACSEC_CIPHERS))
def test_scapy_macsec_decrypts(tmp_path: Path, cipher: str) -> None:
    sa = macsec_sa(cipher, SCI_EXPLICIT)
    plain = plain_frames()
    frames = []
    for i, f in enumerate(plain):
        ssa = MACsecSA(sci=sa.sci, an=sa.an, pn=1 + i, key=sa.sak, icvlen=16, encrypt=True, send_sci=True,
                       xpn_en=sa.xpn, ssci=sa.ssci, salt=sa.salt)
        frames.append(raw(ssa.encrypt(ssa.encap(Ether(f)))))
    frames.reverse()  # out of order, as a capture may be
    bad = bytearray(frames[0])
    bad[30] ^= 0x80
    result, out, _ = run(tmp_path, [bytes(bad), *frames], macsec=[sa])
    assert result.exit_code == 9  # CheckFailed
    assert "frame 1: MACsec SCI 020000000a0a0005 AN 2" in result.output
    assert out == plain[::-1]


def test_esp_inside_macsec(tmp_path: Path) -> None:
    """ExpressRoute Direct shape: IPsec inside MACsec; both layers come off."""
    kw, outer, udp, mode, v6 = ESP_CASES["gcm-raw-v4"]
    cfg = EspSaConfig(spi=0x7000, **kw)
    inners = inner_packets(n=3)
    esp_frames = encrypt_esp(cfg, outer, udp, mode, inners)
    sa = macsec_sa("gcm-aes-xpn-256", SCI_EXPLICIT)
    tx = BE.MacsecTx(SecYConfig(), sa)
    frames = [tx.protect(f)[1] for f in esp_frames]
    result, out, _ = run(tmp_path, frames, esp=[row_for(cfg, outer, v6)], macsec=[sa])
    assert result.exit_code == 0, result.output
    assert "ESP layers: 3, MACsec layers: 3" in result.output
    assert out == [eth(p) for p in inners]
    # MACsec key only: the ESP frames come out still encrypted
    result, out, _ = run(tmp_path, frames, macsec=[sa])
    assert out == esp_frames


# ------------------------------------------------------------------ other capture shapes
def test_pcapng_input(tmp_path: Path) -> None:
    from scapy.utils import PcapNgWriter

    kw, outer, udp, mode, v6 = ESP_CASES["gcm-raw-v4"]
    cfg = EspSaConfig(spi=0x8000, **kw)
    inners = inner_packets(n=3)
    frames = encrypt_esp(cfg, outer, udp, mode, inners)
    cap, out, keys = tmp_path / "in.pcapng", tmp_path / "out.pcap", tmp_path / "esp_sa"
    w = PcapNgWriter(str(cap))
    for i, f in enumerate(frames):
        pkt = Ether(f)
        pkt.time = 1700000000 + i + 0.25
        w.write(pkt)
    w.close()
    write_esp_sa(keys, [row_for(cfg, outer, v6)])
    result = CliRunner().invoke(cli, ["pcap", "decrypt", str(cap), "-o", str(out), "--esp-sa", str(keys)])
    assert result.exit_code == 0, result.output
    lt, data, stamps = read_pcap(out)
    assert lt == 1 and data == [eth(p) for p in inners]
    assert stamps == [(1700000000 + i, 250000) for i in range(3)]


def test_linux_cooked_capture(tmp_path: Path) -> None:
    """`tcpdump -i any` (SLL): the protocol field is fixed up like an EtherType."""
    kw, outer, udp, mode, v6 = ESP_CASES["gcm-v6-outer-v4-inner"]
    cfg = EspSaConfig(spi=0x8001, **kw)
    inners = inner_packets(n=2)
    sll = bytes.fromhex("0000" "0001" "0006" "020000000001" "0000" "86dd")
    frames = [sll + f[14:] for f in encrypt_esp(cfg, outer, udp, mode, inners)]
    result, out, lt = run(tmp_path, frames, esp=[row_for(cfg, outer, v6)], linktype=113)
    assert result.exit_code == 0, result.output
    assert lt == 113
    assert out == [sll[:14] + b"\x08\x00" + p for p in inners]


def test_tfc_dummy_left_out(tmp_path: Path) -> None:
    kw, outer, udp, mode, v6 = ESP_CASES["cbc-udp4500"]
    cfg = EspSaConfig(spi=0x8002, **kw)
    tx = BE.EspOutbound(cfg)
    inner = inner_packets(n=1)[0]
    _, dummy = tx.encap(b"", 59)
    _, real = tx.encap(inner, 4)
    frames = [eth(framing.frame_tunnel(e, *outer, udp_ports=udp)) for e in (dummy, real)]
    result, out, _ = run(tmp_path, frames, esp=[row_for(cfg, outer, v6)])
    assert result.exit_code == 0, result.output
    assert "TFC dummies dropped: 1" in result.output
    assert out == [eth(inner)]
