"""``ipsecemu gateway run`` (a real subprocess) against a real strongSwan charon (kernel-libipsec)
on :func:`pair_topology`: either side initiates, pings pass both ways between the inside hosts,
and both daemons show the same SA (SPIs crosswise, charon's packet counters move).  Needs root."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ipsecemu.lab.harness import pair_conn, pair_topology, ping
from ipsecemu.lab.netns import wait_for
from ipsecemu.strongswan.charon import Charon, charon_available

from support.gateway_lab import Gw

NO_CHARON = charon_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]

PSK = "gateway-vs-charon-psk"
IKE, ESP = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"


def our_config(path: Path, state: Path, tun: str, start: str) -> None:
    path.write_text(f"""\
node: left
state_dir: {state}
local_addresses: [192.0.2.1]
datapath: {{encapsulation: auto}}
connections:
  pair:
    remote_address: 192.0.2.2
    local_id: left
    remote_id: right
    psk: {PSK}
    ike_proposals: {IKE}
    esp_proposals: {ESP}
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
    start_action: {start}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}, mtu: 1400}}
""")


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_gateway_and_charon_ping_both_ways(unique_name: str, tmp_path: Path, we_initiate: bool) -> None:
    with pair_topology(unique_name) as topo:
        gl, gr = topo.gateways
        charon = Charon(gr)
        gw = Gw(gl, tmp_path / "left.yaml", tmp_path / "left", unique_name + "tl")
        try:
            charon.start()
            charon.load(pair_conn(topo, 1, ike_proposal=IKE, esp_proposal=ESP, psk=PSK))
            our_config(gw.cfg, gw.state, gw.tun, "initiate" if we_initiate else "listen")
            gw.start()
            if not we_initiate:
                charon.initiate(child="net", ike="pair")
            sa = charon.wait_established(15)
            assert wait_for(lambda: any(s["child_sas"] for s in gw.sas()), 10), gw.log()
            ours = gw.sas()[0]
            child = ours["child_sas"][0]
            theirs = charon.child_sas()[0]
            assert (child["spi_in"], child["spi_out"]) == (theirs["spi-out"], theirs["spi-in"])
            assert ours["initiator"] is we_initiate and child["encap"] is True  # libipsec forces UDP 4500
            assert sa["state"] == "ESTABLISHED"
            assert child["backend"] == "native"
            # libipsec's route into ipsec0 appears just after its SA is installed
            assert ping(topo.hosts[0], topo.inside[1], count=3, timeout=20) == 3, gw.log() + charon.log_tail()
            assert ping(topo.hosts[1], topo.inside[0], count=3, timeout=20) == 3, gw.log() + charon.log_tail()
            theirs = charon.child_sas()[0]
            assert int(theirs["packets-in"]) >= 6 and int(theirs["packets-out"]) >= 6
            c = gw.counters()["connections"]["pair"]
            assert c["sas"][0]["in"]["packets"] >= 6 and c["sas"][0]["out"]["packets"] >= 6
            assert gw.stop() == 0
            assert wait_for(lambda: not charon.list_sas(), 5)  # our DELETE on SIGTERM reached charon
        finally:
            gw.stop()
            charon.cleanup()


@pytest.mark.slow
def test_rekeys_under_ping_with_charon_lose_nothing(unique_name: str, tmp_path: Path) -> None:
    """Both directions of make-before-break against charon's own rekey logic: we rekey (charon
    answers, then our DELETE), then charon rekeys (we answer, then its DELETE)."""
    with pair_topology(unique_name) as topo:
        gl, gr = topo.gateways
        charon = Charon(gr)
        gw = Gw(gl, tmp_path / "left.yaml", tmp_path / "left", unique_name + "tl")
        try:
            charon.start()
            charon.load(pair_conn(topo, 1, ike_proposal=IKE, esp_proposal=ESP, psk=PSK))
            our_config(gw.cfg, gw.state, gw.tun, "initiate")
            gw.start()
            charon.wait_established(15)
            assert wait_for(lambda: any(s["child_sas"] for s in gw.sas()), 10), gw.log()
            first = gw.sas()[0]["child_sas"][0]["spi_in"]
            assert ping(topo.hosts[0], topo.inside[1], count=1, timeout=10) == 1  # warm ARP/routes
            p = subprocess.Popen(["ip", "netns", "exec", topo.hosts[0], "ping", "-n", "-q", "-c", "150", "-i",
                                  "0.02", "-W", "2", topo.inside[1]], stdout=subprocess.PIPE, text=True)
            time.sleep(0.6)
            gw.cli("rekey", "pair")
            time.sleep(1.2)
            charon.rekey(child="net")
            out, _ = p.communicate(timeout=60)
            assert " 150 received" in out, out + gw.log() + charon.log_tail()
            assert wait_for(lambda: len(charon.child_sas()) == 1 and len(gw.sas()[0]["child_sas"]) == 1, 10)
            now = gw.sas()[0]["child_sas"][0]
            assert now["spi_in"] != first and now["spi_in"] == charon.child_sas()[0]["spi-out"]
            assert gw.log().count("Child SA rekeyed") == 2
        finally:
            gw.stop()
            charon.cleanup()

