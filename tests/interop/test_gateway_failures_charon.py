"""Failures that explain themselves against a real strongSwan charon (branch ikelog): charon
initiates to our listening ``gateway run`` with a wrong PSK, or with an IKE proposal we do not
accept; our log names the connection, charon's address, our role and the reason.  Needs root."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsecemu.lab.harness import pair_conn, pair_topology
from ipsecemu.lab.netns import wait_for
from ipsecemu.strongswan.charon import Charon, charon_available

from support.gateway_lab import Gw

NO_CHARON = charon_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]

PSK = "gateway-vs-charon-psk"
IKE, ESP = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"

CASES = {
    "psk": ({"psk": "charon-has-another-psk", "ike_proposal": IKE},
            "pair: IKE SA deleted (auth_failed): peer 192.0.2.2, responder: PSK mismatch: the AUTH of peer "
            "identity right does not verify with the PSK of connection pair"),
    "ike": ({"psk": PSK, "ike_proposal": "aes256-sha384-modp3072"},
            "pair: IKE_SA_INIT refused (NO_PROPOSAL_CHOSEN): peer 192.0.2.2, responder: no common IKE proposal; "
            f"ours: {IKE}; theirs: aes256-sha384-prfsha384-modp3072"),
}


def _config(path: Path, state: Path, tun: str) -> None:
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
    start_action: listen
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}, mtu: 1400}}
""")


@pytest.mark.parametrize("case", sorted(CASES))
def test_charon_failures_are_explained_in_our_log(unique_name: str, tmp_path: Path, case: str) -> None:
    kw, line = CASES[case]
    name = "ikl" + unique_name[1:6]  # the branch in every netns/link name
    with pair_topology(name) as topo:
        gl, gr = topo.gateways
        charon = Charon(gr)
        gw = Gw(gl, tmp_path / "left.yaml", tmp_path / "left", name + "tl")
        try:
            charon.start()
            charon.load(pair_conn(topo, 1, esp_proposal=ESP, **kw))
            _config(gw.cfg, gw.state, gw.tun)
            gw.start()
            try:
                charon.initiate(child="net", ike="pair")
            except Exception:  # noqa: BLE001 - charon reports the failure we provoked; our log is the point
                pass
            assert wait_for(lambda: line in gw.log(), 15), gw.log() + charon.log_tail()
            assert "charon-has-another-psk" not in gw.log() and PSK not in gw.log()
            print(f"\n[charon {case}] {line}")
        finally:
            gw.stop()
            charon.cleanup()
