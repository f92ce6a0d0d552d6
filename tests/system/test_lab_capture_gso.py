"""`lab capture` writes ESP as it would cross a real wire (root): the gateways send ESP-in-UDP as
UDP GSO trains, which a veth carries unsegmented (and UDP GRO merges on receive), so tcpdump sees
several ESP datagrams in one frame and Wireshark fails their ICV.  Under bulk TCP through the
IPv6-underlay pair lab, the capture kept ``--as-captured`` has such frames (tshark: ICV bad), while
the default capture of the same traffic is one frame per datagram and tshark verifies every ICV
with the keys `--keys` exported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.labs import cli, iperf3_server, lab_up, ns, unique
from support.paths import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]

V6 = REPO / "tests" / "system" / "labs" / "pair-v6.yaml"


def _capture(name: str, pcap: Path, *extra: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{name}/gwa:wan", "-w", str(pcap),
                          "--duration", "4", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO)
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "capturing on" in line, line
    return p


def _icv(pcap: Path, xdg: Path) -> tuple[int, int]:
    """(ESP frames whose ICV tshark verified, ESP frames whose ICV it refused)."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                          "-o", "esp.enable_authentication_check:TRUE", "-Y", "esp", "-T", "fields",
                          "-e", "esp.icv_good", "-e", "esp.icv_bad"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "XDG_CONFIG_HOME": str(xdg)}, check=True).stdout
    rows = [ln.split("\t") for ln in out.splitlines() if ln.strip()]
    return sum(r[0] == "1" for r in rows), sum(r[1] == "1" for r in rows)


def test_capture_cuts_gso_trains_so_wireshark_verifies_every_esp_icv(tmp_path: Path) -> None:
    name = unique("tgso", 5)
    text = V6.read_text().replace("name: pair-v6", f"name: {name}", 1)
    with lab_up(tmp_path, text, name):
        as_is, split = tmp_path / "as-captured.pcap", tmp_path / "split.pcap"
        caps = [_capture(name, as_is, "--as-captured"), _capture(name, split, "--keys", str(tmp_path / "keys"))]
        try:
            with iperf3_server(name, "right", 5301):
                res = ns(name, "left", "iperf3", "-c", "10.2.0.10", "-p", "5301", "-n", "4M", "--connect-timeout",
                         "3000", timeout=60)
                assert res.returncode == 0, res.stdout + res.stderr
            outs = [p.communicate(timeout=60)[0] for p in caps]
        finally:
            for p in caps:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
        assert all(p.returncode == 0 for p in caps), outs
        assert "several ESP datagrams" not in outs[0]
        assert "frame(s) held several ESP datagrams (UDP GSO/GRO): written as" in outs[1], outs[1]
        xdg = tmp_path / "xdg"
        (xdg / "wireshark").mkdir(parents=True)
        (xdg / "wireshark" / "esp_sa").write_text((tmp_path / "keys" / "esp_sa").read_text())
        good_raw, bad_raw = _icv(as_is, xdg)
        good, bad = _icv(split, xdg)
        print(f"as captured: {good_raw} ESP frames verified, {bad_raw} refused; split: {good} verified, {bad} refused")
        assert bad_raw > 0  # the trains exist (else this test proves nothing)
        assert bad == 0 and good > good_raw  # every datagram of the same traffic verified by Wireshark
    assert cli("lab", "status", name, check=False).returncode != 0
