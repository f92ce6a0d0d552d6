"""Connection configs rendered for strongSwan and loaded into a real charon (root)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ipsecemu.config.connection import parse_connection
from ipsecemu.ike.render import render_text
from ipsecemu.lab.harness import charon_pair
from ipsecemu.lab.netns import wait_for
from ipsecemu.strongswan.charon import charon_available

from support.swanctl import POLICIES, blank_times

NO_CHARON = charon_available()
needs_charon = pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")


@pytest.mark.root
@needs_charon
@pytest.mark.skipif(shutil.which("swanctl") is None, reason="swanctl not installed")
@pytest.mark.parametrize("policy", POLICIES, ids=["gcm-ecp384", "cbc-modp2048"])
def test_azure_policy_negotiates_in_strongswan_and_renders_like_swanctl(unique_name: str, policy: dict) -> None:
    cfg = parse_connection({"remote_address": "192.0.2.2", "psk": "x", "ipsec_policy": policy})
    ike, esp = cfg.ike_proposals[0], cfg.esp_proposals[0]
    with charon_pair(unique_name, ike_proposal=ike.to_strongswan_string(),
                     esp_proposal=esp.to_strongswan_string()) as p:
        sas = p.left.list_sas_all()
        name, sa = sas[0]
        # strongSwan negotiated exactly what our proposals say
        theirs = [f"{sa['encr-alg']}-{sa['encr-keysize']}", sa.get("integ-alg"), sa["prf-alg"], sa["dh-group"]]
        assert "/".join(x for x in theirs if x) == ike.to_swanctl_string()
        child = next(iter(sa["child-sas"].values()))
        # the first Child SA rides in IKE_AUTH without a KE; PFS shows up on its rekey
        theirs = [f"{child['encr-alg']}-{child['encr-keysize']}", child.get("integ-alg")]
        assert "/".join(x for x in theirs if x) == esp.to_swanctl_string().rsplit("/", 1)[0]
        assert "dh-group" not in child
        p.left.rekey(child="net")
        assert wait_for(lambda: any(c.get("dh-group") == esp.ke.swan_name and c.get("state") == "INSTALLED"
                                    for c in p.left.child_sas()), 10, 0.05)
        # and our text view of that state equals swanctl's own (times masked: seconds tick)
        out = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{p.left.vici_path}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        assert blank_times(render_text(p.left.list_sas_all())) == blank_times(out)
