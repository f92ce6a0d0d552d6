"""Failures that explain themselves, tried as a new user would, with two real ``gateway run``
daemons in throw-away netns (branch ikelog):

    [l] --- [a] 192.0.2.1 (initiator) ===veth=== 192.0.2.2 (responder) [b] --- [r]

Each broken setting (PSK, identity, IKE proposals, ESP proposals) must give one log line on each
side naming the connection, the peer's address, the role and the reason; the initiator backs
off (1 s, 2 s, ...) and ``sa list`` shows it.  An IKE rekey is logged and the new IKE SA is
listed with its proposal.  Needs root.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, wait_for

from support.gateway_lab import PROPOSALS, PSK, Lab, build_lab, up

pytestmark = pytest.mark.root

OTHER_IKE = "aes256-sha256-modp3072"
OTHER_ESP = "aes256-sha256"

CASES: dict[str, tuple[Callable[[str], str], str, str]] = {
    # case: (edit of b's config, b's line, a's line)
    "psk": (lambda t: t.replace(f"psk: {PSK}", "psk: another-secret-b"),
            "vpn: IKE SA deleted (auth_failed): peer 192.0.2.1, responder: PSK mismatch: the AUTH of peer "
            "identity 192.0.2.1 does not verify with the PSK of connection vpn",
            "vpn: IKE SA deleted (auth_failed): peer 192.0.2.2, initiator: the peer answered AUTHENTICATION_FAILED"),
    "id": (lambda t: t.replace("    tunnel:", "    remote_id: someone.else\n    tunnel:"),
           "vpn: IKE SA deleted (auth_failed): peer 192.0.2.1, responder: identity mismatch: peer identity "
           "192.0.2.1 is not the configured someone.else",
           "vpn: IKE SA deleted (auth_failed): peer 192.0.2.2, initiator: the peer answered AUTHENTICATION_FAILED"),
    "ike": (lambda t: t.replace("ike_proposals: aes128gcm16-prfsha256-modp2048", f"ike_proposals: {OTHER_IKE}"),
            "vpn: IKE_SA_INIT refused (NO_PROPOSAL_CHOSEN): peer 192.0.2.1, responder: no common IKE proposal; "
            "ours: aes256-sha256-prfsha256-modp3072; theirs: aes128gcm16-prfsha256-modp2048",
            "vpn: IKE SA deleted (no_proposal): peer 192.0.2.2, initiator: the peer answered NO_PROPOSAL_CHOSEN to "
            "our IKE_SA_INIT (ours: aes128gcm16-prfsha256-modp2048)"),
    "esp": (lambda t: t.replace("esp_proposals: aes128gcm16-modp2048", f"esp_proposals: {OTHER_ESP}"),
            "vpn: Child SA failed (NO_PROPOSAL_CHOSEN): peer 192.0.2.1, responder, their request: we refused the "
            "peer's first Child SA (IKE_AUTH): no common ESP proposal; ours: aes256-sha256; theirs: aes128gcm16",
            "vpn: Child SA failed (NO_PROPOSAL_CHOSEN): peer 192.0.2.2, initiator, our request: the peer refused our "
            "Child SA: it answered NO_PROPOSAL_CHOSEN; ours: aes128gcm16"),
}


def _lab(unique_name: str, tmp_path: Path, net: Netns, edit_b: Callable[[str], str] | None = None) -> Lab:
    lab = build_lab("ikl" + unique_name[1:6], tmp_path, net, proposals=PROPOSALS)
    if edit_b is not None:
        text = lab.b.cfg.read_text()
        lab.b.cfg.write_text(edit_b(text))
        assert lab.b.cfg.read_text() != text  # the edit really broke something
    lab.b.start()
    lab.a.start()
    return lab


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_failure_is_one_line_per_side_with_connection_peer_role_and_reason(
        unique_name: str, tmp_path: Path, case: str) -> None:
    edit, b_line, a_line = CASES[case]
    net = Netns()
    lab = None
    try:
        lab = _lab(unique_name, tmp_path, net, edit)
        assert wait_for(lambda: b_line in lab.b.log() and a_line in lab.a.log(), 15), \
            f"--- a\n{lab.a.log()}\n--- b\n{lab.b.log()}"
        for g in (lab.a, lab.b):
            text = (g.state / "gateway.log").read_text()
            assert "?: IKE SA" not in text and PSK not in text and "another-secret-b" not in text
        print(f"\n[{case}] b: {b_line}\n[{case}] a: {a_line}")
        if case == "esp":
            return  # the IKE SA is up: nothing to back off from
        # the initiator backs off: 1 s, then 2 s (each up to 20% shorter), visible in sa list
        assert wait_for(lambda: re.search(r"re-initiating in [\d.]+s \(attempt 3,", lab.a.log()) is not None, 15), \
            lab.a.log()
        delays = [float(x) for x in re.findall(r"re-initiating in ([\d.]+)s", lab.a.log())]
        assert 0.8 <= delays[0] <= 1.0 and 1.6 <= delays[1] <= 2.0 and 3.2 <= delays[2] <= 4.0, delays
        print(f"[{case}] back-off delays: {delays}")
        sas = lab.a.sas()
        assert any(s.get("attempts", 0) >= 3 for s in sas), sas
        text = lab.a.cli("list").stdout
        assert "time(s) in a row" in text, text
    finally:
        if lab is not None:
            lab.a.stop()
            lab.b.stop()
        net.close()


def test_ike_rekey_is_logged_and_listed_with_its_proposal(unique_name: str, tmp_path: Path) -> None:
    net = Netns()
    lab = None
    try:
        lab = _lab(unique_name, tmp_path, net)
        up(lab)
        old = lab.a.sas()[0]
        assert old["proposal"] == "aes128gcm16-prfsha256-modp2048"
        lab.a.cli("rekey", old["initiator_spi"])
        assert wait_for(lambda: [s["initiator_spi"] for s in lab.a.sas()] not in ([], [old["initiator_spi"]]), 5)
        assert wait_for(lambda: len(lab.b.sas()) == 1, 5)
        for g, role in ((lab.a, "initiator"), (lab.b, "responder")):
            (new,) = g.sas()
            assert new["proposal"] == old["proposal"] and new["initiator_spi"] != old["initiator_spi"]
            line = f"vpn: IKE SA rekeyed {old['initiator_spi']}_i -> {new['initiator_spi']}_i"
            assert wait_for(lambda g=g, line=line: line in g.log(), 5), g.log()
            assert f"{role}, aes128gcm16-prfsha256-modp2048" in g.log()
    finally:
        if lab is not None:
            lab.a.stop()
            lab.b.stop()
        net.close()
