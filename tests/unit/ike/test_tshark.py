"""Independent opinion on our SK payloads: tshark decrypts and checks a whole exchange between two
in-process peers with the SK_* keys we derived (ikev2_decryption_table UAT)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import wrpcap

from ipsecemu.ike.states import IkeState
from ipsecemu.pcap.uat import IkeSaRow, format_ikev2_table

from support.ike_pair import pair

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@pytest.mark.parametrize("ike,esp,encr,integ", [
    ("aes256-sha256-modp2048", "aes256-sha256", "aes256", "sha256"),
    ("aes128-sha1-ecp256", "aes128-sha1", "aes128", "sha1"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16", "aes256gcm16", "none"),
    ("aes128gcm8-prfsha256-x25519", "aes128gcm16", "aes128gcm8", "none"),
])
def test_tshark_decrypts_our_exchange(tmp_path: Path, ike: str, esp: str, encr: str, integ: str) -> None:
    a, b, net = pair(ike, esp)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    sa.dpd(0.0)
    sa.rekey_child(next(iter(sa.children)), 0.0)
    net.run()
    pkts = [IP(src=p.src[0], dst=p.dst[0]) / UDP(sport=p.src[1], dport=p.dst[1]) / p.data for p in net.log]
    wrpcap(str(tmp_path / "ike.pcap"), pkts)
    k = sa.keys
    conf = tmp_path / "wireshark"
    conf.mkdir()
    (conf / "ikev2_decryption_table").write_text(format_ikev2_table(
        [IkeSaRow(sa.spi_i, sa.spi_r, k.sk_ei, k.sk_er, encr, k.sk_ai, k.sk_ar, integ)]))
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "ike.pcap"), "-V"], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    # tshark found our identities, the first Child SA's selectors and the rekey inside the SK payloads
    assert "left.example" in out and "right.example" in out
    assert "10.1.0.0" in out and "REKEY_SA" in out
    if integ != "none":
        assert out.count("[correct]") >= len(net.log) - 2  # every encrypted message's ICV verified
    assert "[incorrect" not in out.lower() and "Malformed" not in out
