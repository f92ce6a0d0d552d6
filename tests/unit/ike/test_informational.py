"""INFORMATIONAL exchanges: Delete (IKE, Child), DPD, message IDs, retransmission back-off and
limits, duplicate requests answered from the cached response."""

from __future__ import annotations

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.states import IkeState

from support.ike_pair import events, one, pair, seeded


def established(**kw):
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16", **kw)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    sb = b.find(sa.spi_r)
    events(a), events(b)
    net.log.clear()
    return a, b, net, sa, sb


def test_delete_ike_sa_both_sides() -> None:
    a, b, net, sa, sb = established()
    child = next(iter(sa.children.values()))
    sa.delete(net.now)
    net.run()
    ea, eb = events(a), events(b)
    assert one(ea, ev.IkeSaDeleted).reason == "local" and one(eb, ev.IkeSaDeleted).reason == "remote"
    assert one(ea, ev.ChildSaDeleted).inbound_spi == child.inbound_spi
    assert one(eb, ev.ChildSaDeleted).outbound_spi == child.inbound_spi
    assert not a.sas and not b.sas and sa.state == sb.state == IkeState.CLOSED
    assert [m.decode_header(p.data).exchange for p in net.log] == [Exchange.INFORMATIONAL] * 2


def test_delete_child_sa() -> None:
    a, b, net, sa, sb = established()
    spi = next(iter(sa.children))
    sa.delete_child(spi, net.now)
    net.run()
    da, db = one(events(a), ev.ChildSaDeleted), one(events(b), ev.ChildSaDeleted)
    assert da.inbound_spi == spi == db.outbound_spi and da.outbound_spi == db.inbound_spi
    assert not sa.children and not sb.children and sa.state == IkeState.ESTABLISHED
    with pytest.raises(LocalProtocolError):
        sa.delete_child(spi, net.now)


def test_responder_can_delete_too() -> None:
    a, b, net, sa, sb = established()
    sb.delete(net.now)
    net.run()
    assert one(events(a), ev.IkeSaDeleted).reason == "remote"
    assert one(events(b), ev.IkeSaDeleted).reason == "local"


def test_dpd_answered_and_message_ids_advance() -> None:
    a, b, net, sa, sb = established()
    for i in range(3):
        sa.dpd(net.now)
        net.run()
        req, resp = (m.decode_header(p.data) for p in net.log[-2:])
        assert req.msg_id == resp.msg_id == 2 + i and resp.response and not req.response
    assert not events(a) and sa.state == IkeState.ESTABLISHED
    # the responder may start requests of its own: its own message ID space starts at 0
    sb.dpd(net.now)
    net.run()
    assert m.decode_header(net.log[-1].data).msg_id == 0


def test_dpd_timeout_with_exponential_backoff() -> None:
    a, b, net, sa, sb = established()
    net.filter = lambda p: False  # the peer is gone
    sa.dpd(10.0)
    net.now = 10.0
    sent_at = []
    while sa.state != IkeState.CLOSED and net.now < 1000:
        before = len(net.dropped)
        net.advance(0.1)
        if len(net.dropped) > before:
            sent_at.append(round(net.now, 1))
    gaps = [round(b - a, 1) for a, b in zip(sent_at, sent_at[1:], strict=False)]
    cfg = sa.config
    # 4 s, then 4 * 1.8^n: RFC 7296 section 2.1 exponential back-off, then give up
    want = [cfg.retransmit_timeout_s * cfg.retransmit_base ** i for i in range(len(gaps))]
    assert gaps == pytest.approx(want, abs=0.15)
    assert len(sent_at) == 1 + cfg.retransmit_tries
    d = one(events(a), ev.IkeSaDeleted)
    assert d.reason == "dpd" and not a.sas


def test_automatic_dpd_when_idle() -> None:
    a, b, net, sa, sb = established(a_kw={"dpd_delay_s": 30.0})
    net.advance(29.0)
    assert not net.log
    net.advance(2.0)
    assert [m.decode_header(p.data).exchange for p in net.log] == [Exchange.INFORMATIONAL] * 2
    net.filter = lambda p: False
    net.advance(300.0)
    assert one(events(a), ev.IkeSaDeleted).reason == "dpd"


def test_duplicate_request_answered_from_cache() -> None:
    a, b, net, sa, sb = established()
    net.filter = lambda p: not m.decode_header(p.data).response  # lose the first response
    sa.dpd(net.now)
    net.run()
    first_req = net.log[-1].data
    net.filter = lambda p: True
    net.advance(5.0)  # retransmission, answered from the cache
    resp = [p for p in net.log if m.decode_header(p.data).response]
    assert len(resp) == 1 and sb.counters["duplicate_request"] == 1
    assert net.log[-2].data == first_req  # retransmissions are byte-identical
    # the same request again, later: the same cached bytes come back
    b.receive_datagram(first_req, net.log[-2].src, net.now, net.log[-2].dst)
    (again, _r, _l), = b.datagrams_to_send(net.now)
    assert again == resp[0].data


def test_stale_and_future_message_ids_are_dropped() -> None:
    a, b, net, sa, sb = established()
    sa.dpd(net.now)
    net.run()
    req = net.log[-2]
    msg = m.decode_header(req.data)
    # a forged request with a future message ID and garbage SK is ignored, not answered
    forged = bytearray(req.data)
    forged[20:24] = (msg.msg_id + 5).to_bytes(4, "big")
    b.receive_datagram(bytes(forged), req.src, net.now, req.dst)
    assert not b.datagrams_to_send(net.now) and sb.counters["bad_message_id"] == 1
    # a tampered copy of the current ID fails integrity and is dropped silently
    sa.dpd(net.now)
    wire, remote, local = a.datagrams_to_send(net.now)[0]
    bad = bytearray(wire)
    bad[-1] ^= 1
    b.receive_datagram(bytes(bad), local, net.now, remote)
    assert not b.datagrams_to_send(net.now) and sb.counters["integrity"] == 1


def test_unexpected_response_ignored() -> None:
    a, b, net, sa, sb = established()
    sb.dpd(net.now)
    net.run()
    resp = net.log[-1]  # a's answer to b's DPD
    b.receive_datagram(resp.data, resp.src, net.now, resp.dst)  # replayed: nothing pending any more
    assert sb.counters["unexpected_response"] == 1 and not b.datagrams_to_send(net.now)
    a.receive_datagram(resp.data, resp.src, net.now, resp.dst)  # reflected back at its sender
    assert a.counters["unknown_spi"] == 1 and not a.datagrams_to_send(net.now)


def test_api_misuse_is_local_error() -> None:
    a, b, net, sa, sb = established()
    with pytest.raises(LocalProtocolError):
        sa.initiate(net.now)
    with pytest.raises(LocalProtocolError):
        a.initiate("nope", net.now)
    sa.delete(net.now)
    net.run()
    with pytest.raises(LocalProtocolError):
        sa.dpd(net.now)
    with pytest.raises(LocalProtocolError):
        sa.rekey_ike(net.now)


def test_dpd_timeout_from_config_and_volume_lifetimes() -> None:
    """What config/connection.py hands the core: Azure's 45 s DPD timeout and KB/packet limits."""
    a, b, net, sa, sb = established(a_kw={"dpd_timeout_s": 45, "child_kilobytes": 1000, "child_packets": 5000})
    child = next(iter(sa.children.values()))
    assert child.keys.outbound.lifetime.hard_bytes == 1000 * 1024
    assert child.keys.inbound.lifetime.hard_packets == 5000
    assert 0 < child.keys.inbound.lifetime.soft_packets < 5000
    net.filter = lambda p: False
    sa.dpd(100.0)
    net.now = 100.0
    net.advance(44.0)
    assert sa.state == IkeState.ESTABLISHED
    net.advance(2.0)
    assert sa.state == IkeState.CLOSED and one(events(a), ev.IkeSaDeleted).reason == "dpd"


def test_initial_contact_replaces_stale_sas_of_a_rebooted_peer() -> None:
    a, b, net, sa, sb = established()
    # the initiator "reboots": a fresh endpoint with the same config and address, no memory

    from ipsecemu.ike.endpoint import IkeEndpoint
    from ipsecemu.ike.loopback import LoopbackNet

    a2 = IkeEndpoint(list(a.configs.values()), a.local, rng=seeded(99))
    net2 = LoopbackNet([a2, b], now=net.now)
    sa2 = a2.initiate("c", net2.now)
    net2.run()
    assert sa2.state == IkeState.ESTABLISHED and sb.state == IkeState.CLOSED
    assert list(b.sas) == [sa2.spi_r] and b.counters["replaced_by_initial_contact"] == 1
    gone = [e for e in events(b) if isinstance(e, ev.IkeSaDeleted)]
    assert [g.reason for g in gone] == ["replaced"] and gone[0].ike_spi_i == sa.spi_i
