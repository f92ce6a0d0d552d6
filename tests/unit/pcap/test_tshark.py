"""tshark (Wireshark 4.0) reads the key files ipsecemu WRITES and decrypts with them: proof that
the esp_sa and ikev2_decryption_table writers emit tshark's format and algorithm strings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw
from scapy.utils import RawPcapWriter

from ipsecemu.base.satypes import EspSaConfig, Verdict
from ipsecemu.dataplane import backend
from ipsecemu.esp import framing
from ipsecemu.pcap.uat import IkeSaRow, esp_row, write_esp_sa, write_ikev2_table

from support.paths import VECTORS

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
CAPTURES = VECTORS / "captures"


def tshark(home: Path, capture: Path, *args: str) -> str:
    """Run tshark with a private profile directory ($XDG_CONFIG_HOME/wireshark)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "HOME": str(home)}
    proc = subprocess.run(["tshark", "-n", "-r", str(capture), "-o", "esp.enable_encryption_decode:TRUE",
                           "-o", "esp.enable_authentication_check:TRUE", *args],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Error loading table" not in proc.stderr, proc.stderr
    return proc.stdout


def profile(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "xdg"
    (home / "wireshark").mkdir(parents=True)
    return home, home / "wireshark"


# one capture, one SA per algorithm (distinct SPIs), one tshark run (tshark takes seconds to start)
SUITES = [
    ("aes-gcm-16", bytes(range(36)), None, b""),
    ("aes-gcm-12", bytes(range(28)), None, b""),
    ("aes-gcm-8", bytes(range(20)), None, b""),
    ("aes-cbc", bytes(range(32)), "hmac-sha256-128", bytes(range(32, 64))),
    ("aes-cbc", bytes(range(16)), "hmac-sha1-96", bytes(range(20))),
    ("aes-cbc", bytes(range(24)), "hmac-sha384-192", bytes(range(48))),
    ("3des-cbc", bytes(range(24)), "hmac-sha512-256", bytes(range(64))),
    ("3des-cbc", bytes(range(24)), "hmac-md5-96", bytes(range(16))),
    ("null", b"", "hmac-sha256-128", bytes(range(32))),
]


def test_tshark_decrypts_with_our_esp_sa(tmp_path: Path) -> None:
    cap = tmp_path / "esp.pcap"
    rows = []
    with RawPcapWriter(str(cap), linktype=1) as w:
        w.write_header(None)
        for n, (encr, key, integ, ikey) in enumerate(SUITES):
            spi = 0xABC00 + n
            tx = backend("auto").EspOutbound(EspSaConfig(spi=spi, encr=encr, enc_key=key, integ=integ, integ_key=ikey))
            rows.append(esp_row("192.0.2.1", "192.0.2.2", spi, encr, key, integ, ikey))
            for i in range(2):
                inner = raw(IP(src="10.1.0.1", dst=f"10.2.0.{n}") / ICMP(id=77, seq=i + 1) / Raw(b"hello"))
                verdict, esp = tx.encap(inner, 4)
                assert verdict == Verdict.OK
                w.write_packet(raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(framing.frame_tunnel(esp, "192.0.2.1", "192.0.2.2"))), sec=i, usec=0)
    home, ws = profile(tmp_path)
    write_esp_sa(ws / "esp_sa", rows)
    out = tshark(home, cap, "-T", "fields", "-E", "separator=|", "-e", "ip.dst", "-e", "icmp.seq", "-e", "esp.icv_good")
    lines = out.splitlines()
    assert len(lines) == 2 * len(SUITES)
    for k, line in enumerate(lines):
        n, i = divmod(k, 2)
        dst, seq, icv_good = line.split("|")
        assert dst == f"192.0.2.2,10.2.0.{n}", SUITES[n][:1]  # the inner packet was decrypted and dissected
        assert seq == str(i + 1)
        if SUITES[n][2] is not None:  # tshark verified our HMAC with the key we wrote
            assert icv_good == "1", SUITES[n][:1]


def test_tshark_decrypts_real_capture_with_unchecked_icv(tmp_path: Path) -> None:
    meta = json.loads((CAPTURES / "08-sunrise-sunset-aes.json").read_text())
    sa = meta["security_associations"][0]
    home, ws = profile(tmp_path)
    write_esp_sa(ws / "esp_sa", [esp_row("*", sa["dst"], int(sa["spi"], 16), "aes-cbc", bytes.fromhex(sa["enc_key"]),
                                         None, verify_icv=False, icv_len=12)])
    assert "ANY 96 bit authentication [no checking]" in (ws / "esp_sa").read_text()
    out = tshark(home, CAPTURES / meta["file"], "-T", "fields", "-e", "icmp.seq")
    assert len(out.split()) == len(meta["frames"])  # every frame's inner ICMP dissected


def test_tshark_decrypts_ike_with_our_ikev2_table(tmp_path: Path) -> None:
    meta = json.loads((CAPTURES / "ikev2pI2.json").read_text())["ike_sa"]
    ik, rk = meta["initiator_keys"], meta["responder_keys"]
    home, ws = profile(tmp_path)
    write_ikev2_table(ws / "ikev2_decryption_table", [IkeSaRow(
        bytes.fromhex(meta["spi_i"]), bytes.fromhex(meta["spi_r"]), bytes.fromhex(ik["sk_ei"]),
        bytes.fromhex(rk["sk_er"]), "aes128", bytes.fromhex(ik["sk_ai"]), bytes.fromhex(rk["sk_ar"]), "sha1")])
    out = tshark(home, CAPTURES / "ikev2pI2.pcap", "-V")
    assert "ID_FQDN: west" in out  # the SK payload decrypted to IDi "west"
