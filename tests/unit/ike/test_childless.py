"""Childless IKE SAs (RFC 6023), in-process: CHILDLESS_IKEV2_SUPPORTED in IKE_SA_INIT (both
roles), IKE_AUTH without SA/TSi/TSr, the Child SA by CREATE_CHILD_SA (ESP through the
reference data plane), the refusals, and the ``childless`` config key."""

from __future__ import annotations

import pytest

from ipsecemu.config.connection import ConnectionConfigError, loads, parse_connection
from ipsecemu.config.connection_dump import dumps
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, Notify
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState

from support.ike_pair import esp_both_ways, events, one, pair


def exchanges(net) -> list[tuple[int, bool]]:
    out = []
    for p in net.log:
        h = m.decode_header(p.data)
        out.append((h.exchange, h.response))
    return out


def sa_init_notifies(data: bytes) -> list[int]:
    msg = m.decode_header(data)
    msg.payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
    return [n.type for n in msg.get(m.Notification)]


def test_both_roles_announce_support() -> None:
    a, b, net = pair()
    a.initiate("c", 0.0)
    net.run()
    assert Notify.CHILDLESS_IKEV2_SUPPORTED in sa_init_notifies(net.log[0].data)
    assert Notify.CHILDLESS_IKEV2_SUPPORTED in sa_init_notifies(net.log[1].data)
    sa_a = next(iter(a.sas.values()))
    sa_b = next(iter(b.sas.values()))
    assert sa_a.childless_ok and sa_b.childless_ok
    # default "allow": the first Child SA still rides in IKE_AUTH (4 messages in all)
    assert exchanges(net) == [(Exchange.IKE_SA_INIT, False), (Exchange.IKE_SA_INIT, True),
                              (Exchange.IKE_AUTH, False), (Exchange.IKE_AUTH, True)]
    assert len(sa_a.children) == 1 and sa_b.counters.get("childless") is None


def test_never_sends_no_notify() -> None:
    a, b, net = pair(a_kw={"childless": "never"}, b_kw={"childless": "never"})
    a.initiate("c", 0.0)
    net.run()
    assert Notify.CHILDLESS_IKEV2_SUPPORTED not in sa_init_notifies(net.log[0].data)
    assert Notify.CHILDLESS_IKEV2_SUPPORTED not in sa_init_notifies(net.log[1].data)


def test_force_then_create_child_sa() -> None:
    a, b, net = pair(a_kw={"childless": "force"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    assert exchanges(net) == [(Exchange.IKE_SA_INIT, False), (Exchange.IKE_SA_INIT, True),
                              (Exchange.IKE_AUTH, False), (Exchange.IKE_AUTH, True),
                              (Exchange.CREATE_CHILD_SA, False), (Exchange.CREATE_CHILD_SA, True)]
    # IKE_AUTH carried no Child SA: the responder counted a childless IKE SA
    assert next(iter(b.sas.values())).counters["childless"] == 1
    ea, eb = events(a), events(b)
    for evs in (ea, eb):
        kinds = [type(e) for e in evs]
        # the IKE SA is announced first, then the Child SA; no ChildSaFailed in between
        assert kinds.index(ev.IkeSaEstablished) < kinds.index(ev.ChildSaEstablished)
        assert ev.ChildSaFailed not in kinds
    ka, kb = one(ea, ev.ChildSaEstablished).keys, one(eb, ev.ChildSaEstablished).keys
    assert [str(t) for t in ka.local_ts] == ["10.1.0.0/16"] and [str(t) for t in kb.local_ts] == ["10.2.0.0/16"]
    esp_both_ways(ka, kb)


def test_allow_initiate_without_child_then_create_child() -> None:
    a, b, net = pair()
    sa = a.initiate("c", 0.0, child=False)
    net.run()
    assert sa.state == IkeState.ESTABLISHED and sa.children == {}
    assert next(iter(b.sas.values())).counters["childless"] == 1
    ea, eb = events(a), events(b)
    assert not any(isinstance(e, (ev.ChildSaEstablished, ev.ChildSaFailed)) for e in ea + eb)
    sa.create_child(net.now)
    net.run()
    ka, kb = one(events(a), ev.ChildSaEstablished).keys, one(events(b), ev.ChildSaEstablished).keys
    esp_both_ways(ka, kb)


def test_responder_accepts_childless_without_the_initiators_notify(monkeypatch: pytest.MonkeyPatch) -> None:
    # strongSwan's initiator sends no CHILDLESS notify: the responder's announcement is what counts
    a, b, net = pair(a_kw={"childless": "force"}, b_kw={"childless": "allow"})
    real = IkeSa._sa_init_extras

    def like_strongswan(self: IkeSa, response: bool) -> list:
        out = real(self, response)
        return out if response else [p for p in out if getattr(p, "type", 0) != Notify.CHILDLESS_IKEV2_SUPPORTED]

    monkeypatch.setattr(IkeSa, "_sa_init_extras", like_strongswan)
    sa = a.initiate("c", 0.0)
    net.run()
    assert Notify.CHILDLESS_IKEV2_SUPPORTED not in sa_init_notifies(net.log[0].data)
    assert sa.state == IkeState.ESTABLISHED and len(sa.children) == 1
    assert next(iter(b.sas.values())).counters["childless"] == 1


def test_allow_without_peer_support_carries_the_child_anyway() -> None:
    a, b, net = pair(b_kw={"childless": "never"})
    sa = a.initiate("c", 0.0, child=False)
    net.run()
    assert sa.state == IkeState.ESTABLISHED and not sa.childless_ok and len(sa.children) == 1
    assert exchanges(net)[-1] == (Exchange.IKE_AUTH, True)


def test_force_against_a_peer_without_support_fails() -> None:
    a, b, net = pair(a_kw={"childless": "force"}, b_kw={"childless": "never"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.CLOSED and "childless" in sa.last_error
    d = one(events(a), ev.IkeSaDeleted)
    assert d.reason == "failed"
    assert [x for x, _r in exchanges(net)] == [Exchange.IKE_SA_INIT, Exchange.IKE_SA_INIT]  # no IKE_AUTH


def test_responder_refuses_childless_auth_without_negotiation(monkeypatch: pytest.MonkeyPatch) -> None:
    # a misbehaving initiator goes childless although the responder (childless=never) did not
    # announce support: the responder answers INVALID_SYNTAX and keeps nothing
    a, b, net = pair(a_kw={"childless": "force"}, b_kw={"childless": "never"})
    real = IkeSa._read_sa_init_extras

    def ignores_the_answer(self: IkeSa, msg: m.Message) -> None:
        real(self, msg)
        if self.initiator:
            self.childless_ok = True

    monkeypatch.setattr(IkeSa, "_read_sa_init_extras", ignores_the_answer)
    sa = a.initiate("c", 0.0)
    net.run()
    assert Notify.CHILDLESS_IKEV2_SUPPORTED not in sa_init_notifies(net.log[1].data)
    assert b.sas == {}  # the refused SA is gone
    eb = events(b)
    assert one(eb, ev.IkeSaDeleted).notify == Notify.INVALID_SYNTAX
    assert not any(isinstance(e, ev.IkeSaEstablished) for e in eb)
    assert sa.state == IkeState.CLOSED
    assert one(events(a), ev.IkeSaDeleted).notify == Notify.INVALID_SYNTAX


def test_config_key() -> None:
    base = {"local_address": "192.0.2.1", "remote_address": "192.0.2.2", "psk": "s3cret-s3cret"}
    assert parse_connection(base, "x").childless == "allow"
    c = parse_connection({**base, "childless": "Force"}, "x")
    assert c.childless == "force" and to_ike_sa_config(c).childless == "force"
    assert "childless: force" in dumps([c])
    assert loads(dumps([c], include_secret=True))[0].childless == "force"
    with pytest.raises(ConnectionConfigError, match="childless.*never, allow, force"):
        parse_connection({**base, "childless": "sometimes"}, "x")


def test_nat_t_keepalive_config_key() -> None:
    # lives here with the other connection keys added with childless; the gateway reads it
    base = {"local_address": "192.0.2.1", "remote_address": "192.0.2.2", "psk": "s3cret-s3cret"}
    assert parse_connection(base, "x").nat_t.keepalive == 20
    c = parse_connection({**base, "nat_t": {"keep-alive": 5}}, "x")
    assert c.nat_t.keepalive == 5 and to_ike_sa_config(c).keepalive_s == 5
    assert loads(dumps([c], include_secret=True))[0].nat_t.keepalive == 5
    with pytest.raises(ConnectionConfigError, match="keepalive"):
        parse_connection({**base, "nat_t": {"keepalive": -1}}, "x")


def test_childless_ike_sa_rekeys_dpds_and_deletes() -> None:
    a, b, net = pair()
    sa = a.initiate("c", 0.0, child=False)
    net.run()
    events(a), events(b)
    sa.dpd(net.now)
    net.run()
    sa.rekey_ike(net.now)
    net.run()
    rk = one(events(a), ev.IkeSaRekeyed)
    new = a.find(rk.new_spi_i) or sa.successor
    assert new is not None and new.state == IkeState.ESTABLISHED and new.children == {}
    new.delete(net.now)
    net.run()
    assert a.sas == {} and b.sas == {}
    assert [e.reason for e in events(b) if isinstance(e, ev.IkeSaDeleted)] == ["rekeyed", "remote"]
