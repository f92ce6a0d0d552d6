"""Parser and state-machine fuzzing: truncations, bit flips, length lies and random bytes must end
in a protocol-error outcome (ParseError / counted drop / notify), never another exception."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.ike import message as m
from ipsecemu.ike.crypto import SkCipher
from ipsecemu.ike.errors import RemoteProtocolError
from ipsecemu.ike.loopback import Packet
from ipsecemu.ike.states import IkeState

from support.ike_pair import pair

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _handshake() -> list[bytes]:
    a, b, net = pair("aes128-sha256-ecp256", "aes128-sha256")
    sa = a.initiate("c", 0.0)
    net.run()
    sa.dpd(0.0)
    sa.rekey_child(next(iter(sa.children)), 0.0)
    net.run()
    return [p.data for p in net.log]


MESSAGES = _handshake()


def mutate(data: bytes, op: str, pos: int, val: int) -> bytes:
    pos %= max(1, len(data))
    if op == "truncate":
        out = data[:pos]
        return out[:24] + struct.pack("!I", len(out)) + out[28:] if len(out) >= 28 else out
    if op == "flip":
        b = bytearray(data)
        b[pos] ^= 1 << (val % 8)
        return bytes(b)
    if op == "length":  # lie in a payload or header length field
        b = bytearray(data)
        if len(b) > pos + 1:
            b[pos:pos + 2] = (val & 0xFFFF).to_bytes(2, "big")
        return bytes(b)
    return data + bytes([val & 0xFF]) * (pos % 64)


ops = st.sampled_from(["truncate", "flip", "length", "append"])


@FUZZ
@given(st.sampled_from(range(len(MESSAGES))), ops, st.integers(0, 2000), st.integers(0, 0xFFFF))
def test_decoder_only_raises_parse_errors(idx: int, op: str, pos: int, val: int) -> None:
    data = mutate(MESSAGES[idx], op, pos, val)
    try:
        msg = m.decode_message(data)
    except RemoteProtocolError as exc:
        assert exc.notify in (0, 1, 5, 7)
        return
    assert msg.encode() if not any(isinstance(p, m.SK) for p in msg.payloads) else True


@FUZZ
@given(st.binary(max_size=400))
def test_decoder_random_bytes(data: bytes) -> None:
    try:
        m.decode_message(data)
    except RemoteProtocolError:
        pass
    try:
        m.decode_payloads(33, data)
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([(12, 16, 12), (20, 20, None), (28, 36, None), (3, 24, 2)]))
def test_sk_open_only_integrity_errors(body: bytes, alg: tuple) -> None:
    encr, klen, integ = alg
    c = SkCipher(encr, bytes(klen), integ, bytes(32 if integ == 12 else 20))
    try:
        c.open(b"hdr", body)
    except RemoteProtocolError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.sampled_from(range(4)), ops, st.integers(0, 2000), st.integers(0, 0xFFFF))
def test_endpoints_survive_mutated_handshakes(stage: int, op: str, pos: int, val: int) -> None:
    """Replace one datagram of a real handshake by a mutated copy: no exception escapes; the
    peers either still establish (the mutation was harmless or retransmission healed it) or
    end with a counted error."""
    a, b, net = pair("aes128-sha256-ecp256", "aes128-sha256")
    seen = [0]

    def tamper(p: Packet) -> bool:
        seen[0] += 1
        if seen[0] == stage + 1:
            bad = mutate(p.data, op, pos, val)
            for node in net.nodes:
                if node.local[0] == p.dst[0]:
                    node.receive_datagram(bad, p.src, net.now, p.dst)
            return False
        return True

    net.filter = tamper
    sa = a.initiate("c", 0.0)
    net.advance(400.0)  # the full retransmission schedule (4 s * 1.8^n, 5 tries) fits
    assert sa.state in (IkeState.ESTABLISHED, IkeState.CLOSED)
    if sa.state == IkeState.CLOSED:
        # the failure was noticed somewhere: a counted drop or an error notify that closed the SA
        counted = sum(a.counters.values()) + sum(b.counters.values()) + sum(sa.counters.values())
        ended = [e for e in iter(a.next_event, None) if type(e).__name__ == "IkeSaDeleted"]
        assert counted or ended


def _payloads() -> st.SearchStrategy:
    from ipsecemu.ike.consts import Payload
    from ipsecemu.ike.ts import TrafficSelector

    spi = st.binary(min_size=0, max_size=9)
    transform = st.builds(m.Transform, st.integers(1, 6), st.integers(0, 40), st.one_of(st.none(), st.sampled_from(
        [128, 192, 256, 7])))
    proposal = st.builds(m.Proposal, st.integers(1, 3), st.integers(1, 4), spi,
                         st.lists(transform, max_size=5).map(tuple))
    ts = st.builds(TrafficSelector.from_cidr, st.sampled_from(["10.0.0.0/8", "10.2.0.0/16", "192.0.2.0/24",
                                                               "fd00::/64", "10.1.2.3"]))
    return st.one_of(
        st.builds(m.SA, st.lists(proposal, max_size=3)),
        st.builds(m.KE, st.sampled_from([19, 31, 14, 2, 99]), st.binary(max_size=80)),
        st.builds(m.Nonce, st.binary(min_size=16, max_size=40)),
        st.builds(m.Notification, st.sampled_from([16393, 16391, 16384, 14, 17, 43, 44, 40000]),
                  st.binary(max_size=4), st.sampled_from([0, 1, 3]), spi),
        st.builds(m.Delete, st.sampled_from([1, 2, 3]), st.lists(st.binary(min_size=4, max_size=4), max_size=3)),
        st.builds(m.TS, st.sampled_from([Payload.TSi, Payload.TSr]), st.lists(ts, max_size=3)),
        st.builds(m.Vendor, st.binary(max_size=8)),
        st.builds(m.ID, st.sampled_from([Payload.IDi, Payload.IDr]), st.integers(0, 12), st.binary(max_size=8)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([34, 35, 36, 37, 99]), st.lists(_payloads(), max_size=7))
def test_authenticated_garbage_requests_are_answered(exchange: int, payloads: list) -> None:
    """A peer with valid keys sends nonsense: we answer every request exactly once, never raise,
    and the IKE SA keeps working unless the nonsense was a legitimate IKE SA Delete."""
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16")
    sa = a.initiate("c", 0.0)
    net.run()
    sb = b.find(sa.spi_r)
    msg = m.Message(sa.spi_i, sa.spi_r, exchange, sa._next_id, True, False, payloads)
    wire = sa._encrypt(msg)
    b.receive_datagram(wire, A_ADDR, 1.0, B_ADDR)
    out = b.datagrams_to_send(1.0)
    if exchange == 34:
        assert not out  # IKE_SA_INIT with a non-zero SPIr: not for us
        return
    assert len(out) == 1
    resp = m.decode_message(out[0][0])
    assert resp.response and resp.msg_id == msg.msg_id
    deleted_ike = exchange == 37 and any(isinstance(p, m.Delete) and p.protocol == 1 for p in payloads)
    if not deleted_ike:
        assert sb.state == IkeState.ESTABLISHED
        sa._pending = None
        sa._next_id += 1
        sa.dpd(2.0)
        net.run()
        assert sa.state == IkeState.ESTABLISHED and sb.counters.get("bad_message_id") is None


A_ADDR, B_ADDR = ("192.0.2.1", 500), ("192.0.2.2", 500)
