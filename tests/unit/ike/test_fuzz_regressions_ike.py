"""Regression tests for the remote IKE defects of issue 9 ([fuzz] 2 and 3): each feeds the
minimal input and asserts RFC 7296's outcome -- a counted drop or an INVALID_SYNTAX /
NO_PROPOSAL_CHOSEN answer, a failed SA with a reason -- never an exception out of the driving calls."""

from __future__ import annotations

import random
import struct

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, Notify, Payload
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import ParseError
from ipsecemu.ike.proposals import Proposal, Transform, check_selected, parse_proposals
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.ike.states import IkeState
from ipsecemu.ike.tasks.base import from_wire, to_wire
from ipsecemu.ike.transforms import TransformType

A, B = ("192.0.2.1", 500), ("192.0.2.2", 500)


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def endpoint(role: str, ike: str = "aes128-sha256-x25519") -> IkeEndpoint:
    if role == "i":
        cfg = IkeSaConfig.simple("c", "k", "a.example", "b.example", ike=ike, remote_addr=B)
        return IkeEndpoint([cfg], A, rng=seeded(1))
    return IkeEndpoint([IkeSaConfig.simple("c", "k", "b.example", "a.example", ike=ike)], B, rng=seeded(2))


def truncated_ts(v6: bool) -> bytes:
    """A TSi payload body claiming one selector of the right length whose addresses are cut."""
    ts_type, slen = (8, 40) if v6 else (7, 16)
    return struct.pack("!B3x", 1) + struct.pack("!BBHHH", ts_type, 0, slen, 0, 65535) + b"\x0a\x00"


@pytest.mark.parametrize("v6", [False, True])
def test_truncated_traffic_selector_is_a_parse_error(v6: bool) -> None:
    body = truncated_ts(v6)
    with pytest.raises(ParseError) as exc:
        m.decode_payloads(Payload.TSi, struct.pack("!BBH", 0, 0, 4 + len(body)) + body)
    assert exc.value.notify == Notify.INVALID_SYNTAX


def sa_init_request_with(extra: bytes) -> bytes:
    """A real IKE_SA_INIT request from an initiator, with a truncated TSi payload appended."""
    i = endpoint("i")
    i.initiate("c", 0.0)
    wire = i.datagrams_to_send(0.0)[0][0]
    msg = m.decode_message(wire)
    payloads = m.encode_payloads(msg.payloads, last_next=Payload.TSi)
    tsi = struct.pack("!BBH", 0, 0, 4 + len(extra)) + extra
    return msg.header(msg.payloads[0].ptype, m.HEADER_LEN + len(payloads) + len(tsi)) + payloads + tsi


def test_unauthenticated_sa_init_request_with_truncated_ts_is_answered_invalid_syntax() -> None:
    r = endpoint("r")
    r.receive_datagram(sa_init_request_with(truncated_ts(False)), A, 0.0)
    out = r.datagrams_to_send(0.0)
    assert len(out) == 1
    reply = m.decode_message(out[0][0])
    assert reply.response and reply.exchange == Exchange.IKE_SA_INIT
    assert [p.type for p in reply.get(m.Notification)] == [Notify.INVALID_SYNTAX]
    assert r.sas == {} and r.last_internal_error is None and "internal_error" not in r.counters


def test_spoofed_sa_init_response_with_truncated_ts_is_a_counted_drop() -> None:
    i = endpoint("i")
    sa = i.initiate("c", 0.0)
    i.datagrams_to_send(0.0)
    body = truncated_ts(True)
    resp = m.Message(sa.spi_i, bytes(range(1, 9)), Exchange.IKE_SA_INIT, 0, False, True, [])
    tsi = struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    i.receive_datagram(resp.header(Payload.TSi, m.HEADER_LEN + len(tsi)) + tsi, B, 0.0)
    assert sa.counters.get("protocol_error") == 1 and sa.state == IkeState.SA_INIT_SENT  # still waits
    assert i.last_internal_error is None


def established() -> tuple[IkeEndpoint, IkeEndpoint]:
    i, r = endpoint("i"), endpoint("r")
    i.initiate("c", 0.0)
    for _ in range(4):
        for src, dst in ((i, r), (r, i)):
            for d, _r, _l in src.datagrams_to_send(0.0):
                dst.receive_datagram(d, src.local, 0.0)
    return i, r


def test_encrypted_request_with_truncated_ts_is_answered_invalid_syntax() -> None:
    i, r = established()
    isa = next(iter(i.sas.values()))
    assert isa.state == IkeState.ESTABLISHED
    body = truncated_ts(False)
    # a CREATE_CHILD_SA request whose (authenticated) inner TSi is cut: the responder answers
    inner = m.Unknown(Payload.TSi, body)
    msg = m.Message(isa.spi_i, isa.spi_r, Exchange.CREATE_CHILD_SA, isa._next_id, True, False, [inner])
    r.receive_datagram(msg.encode_encrypted(isa._cout, bytes(16)), A, 1.0)
    out = r.datagrams_to_send(1.0)
    assert len(out) == 1
    i.receive_datagram(out[0][0], B, 1.0)  # not pending on our side: counted, not raised
    reply = m.decode_message(out[0][0])
    plain = m.decrypt(reply, out[0][0], isa._cin)
    assert [p.type for p in plain if isinstance(p, m.Notification)] == [Notify.INVALID_SYNTAX]
    assert r.last_internal_error is None and i.last_internal_error is None


def answer(props: list, integ: int) -> Proposal:
    """The responder's choice for the first offered proposal, with INTEG set to ``integ``."""
    p = props[0]
    ts = [t if t.type != TransformType.INTEG else Transform(TransformType.INTEG, integ) for t in p.transforms]
    return Proposal(p.protocol, tuple(ts), p.number)


def test_check_selected_refuses_integ_none_for_a_classic_cipher() -> None:
    offered = parse_proposals("aes128-sha256-x25519", "ike")
    assert check_selected(offered, answer(offered, 12))
    assert not check_selected(offered, answer(offered, 0))
    aead = parse_proposals("aes128gcm16-prfsha256-x25519", "ike")
    with_none = Proposal("ike", (*aead[0].transforms, Transform(TransformType.INTEG, 0)), 1)
    assert check_selected(aead, with_none)  # INTEG NONE beside an AEAD cipher is fine


def test_sa_init_response_with_integ_none_fails_the_sa_cleanly() -> None:
    i, r = endpoint("i"), endpoint("r")
    sa = i.initiate("c", 0.0)
    r.receive_datagram(i.datagrams_to_send(0.0)[0][0], A, 0.0)
    wire = r.datagrams_to_send(0.0)[0][0]
    resp = m.decode_message(wire)
    chosen = from_wire(resp.first(m.SA).proposals)
    resp.payloads[0] = m.SA(to_wire([answer(chosen, 0)], b""))
    i.receive_datagram(resp.encode(), B, 0.0)
    assert sa.state == IkeState.CLOSED
    assert "not one we offered" in sa.last_error
    deleted = [e for e in iter(i.next_event, None) if isinstance(e, ev.IkeSaDeleted)]
    assert [(e.reason, e.notify) for e in deleted] == [("failed", Notify.INVALID_SYNTAX)]
    assert i.last_internal_error is None and "internal_error" not in i.counters


def test_last_resort_guard_counts_a_core_bug_without_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    r = endpoint("r")

    def boom(*_a: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(r, "_sa_init_request", boom)
    i = endpoint("i")
    i.initiate("c", 0.0)
    r.receive_datagram(i.datagrams_to_send(0.0)[0][0], A, 0.0)
    assert r.counters["internal_error"] == 1 and isinstance(r.last_internal_error, KeyError)
