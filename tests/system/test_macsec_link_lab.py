"""MACsec links as a lab service: `lab up` starts a daemon per end, waits until MKA secured the
link, registers the PIDs (lab down stops them) and exports the SAKs for `lab capture --keys`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsecemu.lab.builder import build, teardown
from ipsecemu.lab.state import LabState, LabStateError, pid_alive
from ipsecemu.lab.svc_macsec import MacsecServiceError
from ipsecemu.lab.topology import load, loads

pytestmark = pytest.mark.root

from support.paths import REPO  # noqa: E402

CAK = "00112233445566778899aabbccddeeff"


def _topo(name: str, extra: str = "") -> str:
    return f"""
name: {name}
nodes:
  a: {{kind: router, addresses: {{l: [10.78.0.1/30]}}}}
  b: {{kind: router, addresses: {{l: [10.78.0.2/30]}}}}
links:
  - endpoints: ["a:l", "b:l"]
    macsec: {{cipher: GcmAesXpn128, sci_state: Disabled, ckn: "0a0b", cak: "{CAK}"{extra}}}
"""


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipsecemu", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_lab_up_secures_the_link_and_capture_keys_decrypt(unique_name: str, tmp_path: Path) -> None:
    topo = loads(_topo(unique_name), file="t.yaml")
    try:
        st = build(topo)
        daemons = [p for p in st.data["processes"] if p["role"] == "daemon"]
        assert sorted(p["node"] for p in daemons) == ["a", "b"]
        for node in ("a", "b"):
            s = json.loads((st.dir / node / "macsec-l.status.json").read_text())
            assert s["secured"] and s["live_peers"]
            assert oct((st.dir / node / "macsec-l.yaml").stat().st_mode & 0o777) == "0o600"  # holds the CAK
        cap = tmp_path / "phy.pcap"
        keys = tmp_path / "keys"
        capture = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{unique_name}/a:l_phy",
                                    "-w", str(cap), "--duration", "2", "--keys", str(keys)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        time.sleep(0.8)
        ping = subprocess.run(["ip", "netns", "exec", topo.netns("a"), "ping", "-c", "3", "-i", "0.2", "-W", "1",
                               "10.78.0.2"], capture_output=True, text=True, timeout=20)
        assert ping.returncode == 0, ping.stdout
        out, _ = capture.communicate(timeout=30)
        assert capture.returncode == 0, out
        keyfile = keys / "macsec-a-l.json"
        assert keyfile.exists(), out
        assert CAK not in keyfile.read_text()
        clear = tmp_path / "clear.pcap"
        res = _cli("pcap", "decrypt", str(cap), "-o", str(clear), "--macsec-sa", str(keyfile))
        assert res.returncode == 0, res.stdout + res.stderr
        icmp = subprocess.run(["tshark", "-n", "-r", str(clear), "-Y", "icmp"], capture_output=True, text=True,
                              timeout=60).stdout
        assert icmp.count("Echo (ping) request") >= 3 and icmp.count("Echo (ping) reply") >= 3
    finally:
        teardown(topo.name)
    for p in daemons:
        assert not pid_alive(p["pid"], p["start_time"])


@pytest.mark.parametrize(("text", "field"), [
    (None, "replay_window"),
    ('cak: "00112233445566778899aabbccddeeff"', "ckn"),  # half a CAK/CKN pair
])
def test_bad_macsec_config_fails_lab_up_naming_the_field(unique_name: str, text: str | None, field: str) -> None:
    topo_text = _topo(unique_name, extra=", replay_window: -1")
    if text is not None:
        topo_text = topo_text.split("    macsec:")[0] + f"    macsec: {{{text}}}\n"
    topo = loads(topo_text, file="t.yaml")
    with pytest.raises(MacsecServiceError, match=rf"t\.yaml: links\[0\]\.macsec\.{field}"):
        build(topo)
    with pytest.raises(LabStateError):
        LabState.open(unique_name)  # rolled back


@pytest.mark.slow
def test_er_direct_macsec_lab_carries_er_and_vpn_traffic(unique_name: str) -> None:
    """The S4 lab: both CE-MSEE links secured; spoke1 reaches onprem1 (VPN over MACsec) and
    onprem2 (plain ExpressRoute over MACsec); the CE links' MACsec SAs carried it."""
    topo = load(REPO / "netns-labs" / "er-direct-macsec.yaml").renamed(unique_name[:7] + "edm")
    try:
        st = build(topo)
        for dst in ("10.0.1.10", "10.0.2.10"):
            res = subprocess.run(["ip", "netns", "exec", topo.netns("spoke1"), "ping", "-c", "3", "-i", "0.2",
                                  "-W", "2", dst], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stdout
        time.sleep(1.2)  # status files are refreshed every second
        carried = 0
        for iface in ("msee1", "msee2"):
            s = json.loads((st.dir / "ce" / f"macsec-{iface}.status.json").read_text())
            assert s["secured"] and s["config"]["cipher"] == "GcmAesXpn256"
            carried += s["loop"]["validated"]
        assert carried >= 6
    finally:
        teardown(topo.name)
