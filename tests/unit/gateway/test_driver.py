"""The gateway's events-first driver: the R flag comes from the IKE header decoder, events are handled
before the datagrams they came with are sent, and IKE sent to a peer is timed (for keepalives)."""

from __future__ import annotations

from ipsecemu.gateway.driver import EventsFirst
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.message import Message
from ipsecemu.ike.settings import IkeSaConfig

PEER = ("192.0.2.2", 500)


def _endpoint() -> IkeEndpoint:
    cfg = IkeSaConfig.simple("c", "psk-for-driver-test", "left", "right", local_ts="10.1.0.0/24",
                             remote_ts="10.2.0.0/24", remote_addr=PEER)
    return IkeEndpoint([cfg], ("192.0.2.1", 500))


def _datagram(response: bool) -> bytes:
    return Message(b"\x01" * 8, b"\x02" * 8 if response else bytes(8), 34, 0, not response, response).encode()


def test_response_flag_from_header_decoder() -> None:
    seen: list[tuple[object, bool]] = []
    d = EventsFirst(_endpoint(), lambda ev, from_response: seen.append((ev, from_response)))
    d.receive_datagram(_datagram(True), PEER, 0.0)
    assert d.from_response is True
    d.receive_datagram(_datagram(False), PEER, 0.0)
    assert d.from_response is False
    d.receive_datagram(b"\x00" * 12, PEER, 0.0)  # not even a header: dropped by the core, not a response
    assert d.from_response is False
    d.handle_timer(1.0)
    assert d.from_response is False


def test_initiate_records_last_sent_and_events_are_drained_first() -> None:
    ep = _endpoint()
    seen: list[object] = []
    d = EventsFirst(ep, lambda ev, _r: seen.append(ev))
    ep.initiate("c", 5.0)
    out = d.datagrams_to_send(5.0)
    assert out and all(remote == PEER for _data, remote, _local in out)
    assert d.last_sent == {PEER[0]: 5.0}
    assert d.next_event() is None  # the driver hands events out itself
