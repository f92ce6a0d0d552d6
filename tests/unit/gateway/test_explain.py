"""The gateway's failure lines: the core's events from two real (sans-I/O) endpoints, worded by
gateway/explain.py -- connection, peer, role, reason; repeats suppressed per REPEAT_S."""

from __future__ import annotations

import logging

import pytest

from ipsecemu.gateway.explain import FailureLog, describe
from ipsecemu.ike import events as ev
from ipsecemu.ike.settings import Identity

from support.ike_pair import events, pair


def _lines(evs: list[ev.Event]) -> list[str]:
    return [d[1] for d in map(describe, evs) if d is not None]


def test_wrong_psk_line_names_connection_peer_role_and_psk() -> None:
    a, b, net = pair(a_kw={"psk": "psk-of-a-123"}, b_kw={"psk": "psk-of-b-456"})
    a.initiate("c", 0.0)
    net.run()
    (lb,) = _lines(events(b))
    assert lb.startswith("c: IKE SA deleted (auth_failed): peer 192.0.2.1, responder: PSK mismatch"), lb
    (la,) = _lines(events(a))
    assert la.startswith("c: IKE SA deleted (auth_failed): peer 192.0.2.2, initiator: the peer answered "
                         "AUTHENTICATION_FAILED"), la
    assert "psk-of" not in la + lb


def test_wrong_id_line_says_identity() -> None:
    a, b, net = pair()
    b.configs["c"].remote_id = Identity.parse("someone.else")
    a.initiate("c", 0.0)
    net.run()
    (lb,) = _lines(events(b))
    assert "responder: identity mismatch: peer identity left.example is not the configured someone.else" in lb


def test_no_proposal_lines_carry_both_lists() -> None:
    a, b, net = pair(a_kw={"ike": "aes128-sha1-modp2048"}, b_kw={"ike": "aes256gcm16-prfsha384-ecp384"})
    a.initiate("c", 0.0)
    net.run()
    (lb,) = _lines(events(b))
    assert lb == ("c: IKE_SA_INIT refused (NO_PROPOSAL_CHOSEN): peer 192.0.2.1, responder: no common IKE "
                  "proposal; ours: aes256gcm16-prfsha384-ecp384; theirs: aes128-sha1-prfsha1-modp2048")
    (la,) = _lines(events(a))
    assert "initiator: the peer answered NO_PROPOSAL_CHOSEN" in la and "aes128-sha1-prfsha1-modp2048" in la


def test_refused_child_lines_on_both_sides() -> None:
    a, b, net = pair(a_kw={"esp": "aes128-sha1"}, b_kw={"esp": "aes256gcm16"})
    a.initiate("c", 0.0)
    net.run()
    (la,) = _lines(events(a))
    (lb,) = _lines(events(b))
    assert la.startswith("c: Child SA failed (NO_PROPOSAL_CHOSEN): peer 192.0.2.2, initiator, our request")
    assert lb.startswith("c: Child SA failed (NO_PROPOSAL_CHOSEN): peer 192.0.2.1, responder, their request")
    assert lb.endswith("; ours: aes256gcm16; theirs: aes128-sha1")


def test_ike_rekey_is_logged_with_its_proposal() -> None:
    a, b, net = pair()
    sa = a.initiate("c", 0.0)
    net.run()
    events(a), events(b)
    sa.rekey_ike(net.now)
    net.run()
    lines = _lines(events(a))
    assert any(" IKE SA rekeyed " in x and x.endswith("initiator, aes256-sha256-prfsha256-modp2048") for x in lines)


def test_repeats_are_suppressed_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    t = [0.0]
    flog = FailureLog(logging.getLogger("ipsecemu.test.explain"), clock=lambda: t[0], repeat_s=10)
    gone = ev.IkeSaDeleted(b"i" * 8, b"r" * 8, "auth_failed", 24, "PSK mismatch: x", conn="vpn",
                           peer=("192.0.2.9", 500), initiator=False)
    with caplog.at_level(logging.INFO, logger="ipsecemu.test.explain"):
        for _ in range(5):
            flog(gone)
            t[0] += 1
        t[0] = 12
        flog(gone)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert msgs[1].endswith("(4 more like it in the last 12 s)")
