"""Failures that explain themselves: every failure event of the core names the connection, the
peer's address, our role and the reason in words (PSK vs identity vs proposals, both proposal
lists, the peer's notify); secrets never appear.  Two endpoints back to back (ike/loopback.py)."""

from __future__ import annotations

from ipsecemu.ike import events as ev
from ipsecemu.ike.consts import Notify
from ipsecemu.ike.proposals import parse_proposals
from ipsecemu.ike.settings import Identity
from ipsecemu.ike.states import IkeState

from support.ike_pair import A, B, events, one, pair


def _all_text(evs: list[ev.Event]) -> str:
    return " ".join(repr(e) for e in evs)


def test_wrong_psk_says_psk_mismatch_on_the_responder_and_the_notify_on_the_initiator() -> None:
    a, b, net = pair(a_kw={"psk": "a-secret-1"}, b_kw={"psk": "b-secret-2"})
    a.initiate("c", 0.0)
    net.run()
    ea, eb = events(a), events(b)
    rb = one(eb, ev.IkeSaDeleted)
    assert rb.reason == "auth_failed" and rb.notify == Notify.AUTHENTICATION_FAILED
    assert (rb.conn, rb.peer, rb.role) == ("c", A, "responder")
    assert rb.detail.startswith("PSK mismatch") and "left.example" in rb.detail, rb.detail
    ra = one(ea, ev.IkeSaDeleted)
    assert (ra.conn, ra.peer, ra.role) == ("c", B, "initiator")
    assert "AUTHENTICATION_FAILED" in ra.detail, ra.detail
    text = _all_text(ea + eb)
    assert "a-secret-1" not in text and "b-secret-2" not in text


def test_wrong_identity_says_identity_mismatch_not_psk() -> None:
    a, b, net = pair()
    b.configs["c"].remote_id = Identity.parse("someone.else")
    a.initiate("c", 0.0)
    net.run()
    rb = one(events(b), ev.IkeSaDeleted)
    assert rb.reason == "auth_failed" and rb.role == "responder" and rb.conn == "c"
    assert rb.detail.startswith("identity mismatch") and "left.example" in rb.detail and "someone.else" in rb.detail


def test_no_common_ike_proposal_gives_both_lists() -> None:
    a, b, net = pair(a_kw={"ike": "aes128-sha1-modp2048"}, b_kw={"ike": "aes256gcm16-prfsha384-ecp384"})
    a.initiate("c", 0.0)
    net.run()
    da = one(events(a), ev.IkeSaDeleted)
    assert da.reason == "no_proposal" and da.role == "initiator" and da.peer == B
    assert "NO_PROPOSAL_CHOSEN" in da.detail and "aes128-sha1-prfsha1-modp2048" in da.detail, da.detail
    rb = one(events(b), ev.IkeSaRefused)
    assert rb.peer == A and rb.ours and rb.theirs and rb.ours != rb.theirs


def test_refused_first_child_is_an_event_on_both_sides_with_both_lists() -> None:
    a, b, net = pair(a_kw={"esp": "aes128-sha1"}, b_kw={"esp": "aes256gcm16"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    fa, fb = one(events(a), ev.ChildSaFailed), one(events(b), ev.ChildSaFailed)
    assert fa.requested and "NO_PROPOSAL_CHOSEN" in fa.reason and fa.ours == ("aes128-sha1",)
    assert not fb.requested and fb.notify == Notify.NO_PROPOSAL_CHOSEN and fb.role == "responder"
    assert fb.ours == ("aes256gcm16",) and fb.theirs == ("aes128-sha1",)
    assert "no common ESP proposal" in fb.reason


def test_refused_child_rekey_is_an_event_on_both_sides() -> None:
    a, b, net = pair()
    sa = a.initiate("c", 0.0)
    net.run()
    events(a), events(b)
    b.configs["c"].esp_proposals = parse_proposals("aes128gcm16", "esp")  # the peer changed its mind
    sa.rekey_child(next(iter(sa.children)), net.now)
    net.run()
    fa, fb = one(events(a), ev.ChildSaFailed), one(events(b), ev.ChildSaFailed)
    assert fa.requested and fa.notify == Notify.NO_PROPOSAL_CHOSEN and fa.role == "initiator"
    assert not fb.requested and fb.theirs == ("aes256gcm16",) and fb.ours == ("aes128gcm16",)
    assert sa.state == IkeState.ESTABLISHED and len(sa.children) == 1  # the old Child SA keeps working


def test_unacceptable_selectors_are_named() -> None:
    a, b, net = pair(b_kw={"local_ts": "172.16.0.0/12"})
    a.initiate("c", 0.0)
    net.run()
    fb = one(events(b), ev.ChildSaFailed)
    assert fb.notify == Notify.TS_UNACCEPTABLE and "10.2.0.0/16" in fb.reason and "172.16.0.0/12" in fb.reason


def test_ike_rekey_carries_the_new_proposal_and_a_refused_one_is_an_event() -> None:
    a, b, net = pair()
    sa = a.initiate("c", 0.0)
    net.run()
    est = one(events(a), ev.IkeSaEstablished)
    events(b)
    sa.rekey_ike(net.now)
    net.run()
    rk = one(events(a), ev.IkeSaRekeyed)
    assert rk.proposal == est.proposal and rk.conn == "c" and rk.role == "initiator"
    assert one(events(b), ev.IkeSaRekeyed).proposal == est.proposal
    new = a.find(rk.new_spi_i)
    assert new is not None
    b.configs["c"].ike_proposals = parse_proposals("aes128gcm16-prfsha256-ecp256", "ike")
    new.rekey_ike(net.now)
    net.run()
    f = one(events(a), ev.IkeSaRekeyFailed)
    assert f.notify == Notify.NO_PROPOSAL_CHOSEN and "NO_PROPOSAL_CHOSEN" in f.detail and "retrying" in f.detail
    assert new.state == IkeState.ESTABLISHED
