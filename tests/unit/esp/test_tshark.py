"""Wireshark's ESP dissector (tshark) as a third opinion: packets from the reference encap,
framed by ipsecemu.esp.framing, decrypt in tshark with a correct ICV and the right inner packet."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from ipsecemu.base.algorithms import ESP_ENCR, ESP_INTEG
from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.esp import framing
from ipsecemu.esp.reference import EspOutbound

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (make deps)")

# (our encr, key bytes without salt, our integ, Wireshark encryption name, Wireshark auth name)
SUITES = [
    ("aes-gcm-16", 16, None, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aes-gcm-16", 32, None, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aes-gcm-8", 16, None, "AES-GCM with 8 octet ICV [RFC4106]", "NULL"),
    ("aes-gcm-12", 24, None, "AES-GCM with 12 octet ICV [RFC4106]", "NULL"),
    # no ChaCha20-Poly1305: Wireshark 4.0's ESP dissector has no such algorithm (added later)
    ("aes-cbc", 16, "hmac-sha256-128", "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    ("aes-cbc", 32, "hmac-sha1-96", "AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]"),
    ("aes-cbc", 24, "hmac-sha512-256", "AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
    ("3des-cbc", 24, "hmac-sha384-192", "TripleDES-CBC [RFC2451]", "HMAC-SHA-384-192 [RFC4868]"),
    ("null", 0, "hmac-md5-96", "NULL", "HMAC-MD5-96 [RFC2403]"),
]
SRC, DST = "192.0.2.1", "198.51.100.1"


def test_tshark_decrypts_reference_output(tmp_path: Path) -> None:
    frames, uat, expected = [], [], []
    for i, (encr, klen, integ, ws_encr, ws_auth) in enumerate(SUITES):
        spi = 0x1000 + i
        enc_key = bytes((i * 16 + j) & 0xFF for j in range(klen + ESP_ENCR[encr][1]))
        integ_key = bytes((0xA0 + j) & 0xFF for j in range(ESP_INTEG[integ][0])) if integ else b""
        cfg = EspSaConfig(spi=spi, encr=encr, enc_key=enc_key, integ=integ, integ_key=integ_key)
        out = EspOutbound(cfg)
        nat_t = i % 2 == 1  # every other suite over UDP 4500
        for n in range(2):
            inner = bytes(IP(src=f"10.1.{i}.1", dst="10.2.0.1") / ICMP(id=i, seq=n) / Raw(b"tshark" * (n + 1)))
            verdict, esp = out.encap(inner, framing.inner_next_header(inner))
            assert verdict == Verdict.OK
            wire = framing.frame_tunnel(esp, SRC, DST, udp_ports=(4500, 4500) if nat_t else None)
            frames.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(wire))
            expected.append((spi, n + 1, f"10.1.{i}.1"))
        akey = f"0x{integ_key.hex()}" if integ_key else ""
        ekey = f"0x{enc_key.hex()}" if enc_key else ""
        uat.append(f'"IPv4","{SRC}","{DST}","0x{spi:08x}","{ws_encr}","{ekey}","{ws_auth}","{akey}"')
    pcap = tmp_path / "ref.pcap"
    wrpcap(str(pcap), frames)
    conf = tmp_path / "conf" / "wireshark"
    conf.mkdir(parents=True)
    (conf / "esp_sa").write_text("\n".join(uat) + "\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "conf"), HOME=str(tmp_path))
    cmd = ["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
           "-o", "esp.enable_authentication_check:TRUE", "-d", "udp.port==4500,udpencap",
           "-T", "fields", "-E", "separator=|", "-e", "esp.spi", "-e", "esp.sequence",
           "-e", "esp.icv_good", "-e", "ip.src", "-e", "icmp.type"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines()]
    assert len(rows) == len(expected)
    for row, (spi, seq, inner_src) in zip(rows, expected, strict=True):
        assert int(row[0], 16) == spi and int(row[1]) == seq, row
        # icv_good: "1" (or "True") only when tshark recomputed the ICV/tag and it matched
        assert row[2] in ("1", "True"), (hex(spi), row)
        assert row[3].split(",") == [SRC, inner_src], row  # outer then decrypted inner IPv4
        assert row[4] == "8", row  # ICMP echo request decoded from the plaintext
