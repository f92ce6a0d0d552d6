"""Half-open IKE SAs stay bounded: past ``max_half_open`` new IKE_SA_INIT requests are dropped
and counted (never answered), even with a valid COOKIE; once the half-open SAs time out,
legitimate peers get through again."""

from __future__ import annotations

import random

from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, Notify
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.events import ChildSaEstablished
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.ike.states import IkeState

B = ("192.0.2.2", 500)
IKE = "aes128-sha256-x25519"  # cheap DH: hundreds of handshakes stay fast


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def responder(**kw: object) -> IkeEndpoint:
    cfg = IkeSaConfig.simple("c", "s3cret", "right.example", None, ike=IKE, local_ts="10.2.0.0/16",
                             remote_ts="10.1.0.0/16")
    return IkeEndpoint([cfg], B, rng=seeded(2), **kw)  # type: ignore[arg-type]


def flooder(port: int, seed: int) -> IkeSa:
    """An initiator from its own source port that never sends IKE_AUTH (we only read its SA_INIT)."""
    cfg = IkeSaConfig.simple("f", "s3cret", "flood.example", None, ike=IKE, remote_addr=B)
    sa = IkeSa(cfg, initiator=True, local=("198.51.100.7", port), rng=seeded(seed))
    sa.initiate(0.0)
    return sa


def sa_init(sa: IkeSa) -> bytes:
    out = sa.datagrams_to_send(0.0)
    assert len(out) == 1 and m.decode_header(out[0][0]).exchange == Exchange.IKE_SA_INIT
    return out[0][0]


def is_cookie(reply: bytes) -> bool:
    msg = m.decode_header(reply)
    msg.payloads = m.decode_payloads(reply[16], reply[m.HEADER_LEN:])
    return msg.notify(Notify.COOKIE) is not None


def test_flood_is_capped_and_not_answered() -> None:
    b = responder(cookie_threshold=1 << 30, max_half_open=50)
    for i in range(300):
        f = flooder(20000 + i, 1000 + i)
        b.receive_datagram(sa_init(f), f.local, 0.0, B)
        replies = b.datagrams_to_send(0.0)
        assert len(replies) == (1 if i < 50 else 0)  # nothing at all past the cap
    assert len(b._half_open) == 50 and len(b.sas) == 50
    assert b.counters["half_open_cap"] == 250
    # timers alone add no state
    b.handle_timer(1.0)
    assert len(b.sas) == 50


def test_valid_cookie_past_the_cap_is_dropped() -> None:
    b = responder(cookie_threshold=5, max_half_open=20)
    n = 0

    def admit(sa: IkeSa) -> None:
        """SA_INIT, cookie dance if asked, until the responder holds a half-open SA for it."""
        b.receive_datagram(sa_init(sa), sa.local, 0.0, B)
        reply = b.datagrams_to_send(0.0)
        if is_cookie(reply[0][0]):
            sa.receive_datagram(reply[0][0], B, 0.0, sa.local)
            b.receive_datagram(sa_init(sa), sa.local, 0.0, B)
            reply = b.datagrams_to_send(0.0)
            assert len(reply) == 1 and not is_cookie(reply[0][0])

    for n in range(5):
        admit(flooder(30000 + n, 2000 + n))
    # X asks now and gets a cookie, but holds its retry while the rest of the room fills up
    x = flooder(40000, 9)
    b.receive_datagram(sa_init(x), x.local, 0.0, B)
    (reply,) = b.datagrams_to_send(0.0)
    assert is_cookie(reply[0])
    x.receive_datagram(reply[0], B, 0.0, x.local)
    retry = sa_init(x)
    for n in range(5, 20):
        admit(flooder(30000 + n, 2000 + n))
    assert len(b._half_open) == 20
    sent_cookies = b.counters["cookie_sent"]
    b.receive_datagram(retry, x.local, 0.0, B)
    assert b.datagrams_to_send(0.0) == []
    assert b.counters["half_open_cap"] == 1 and b.counters["cookie_sent"] == sent_cookies
    assert len(b._half_open) == 20 and len(b.sas) == 20


def test_legitimate_peer_gets_through_after_timeout() -> None:
    b = responder(cookie_threshold=1 << 30, max_half_open=30)
    a = IkeEndpoint([IkeSaConfig.simple("c", "s3cret", "left.example", "right.example", ike=IKE,
                                        local_ts="10.1.0.0/16", remote_ts="10.2.0.0/16", remote_addr=B)],
                    ("192.0.2.1", 500), rng=seeded(1))
    for i in range(100):
        f = flooder(20000 + i, 3000 + i)
        b.receive_datagram(sa_init(f), f.local, 0.0, B)
    b.datagrams_to_send(0.0)
    net = LoopbackNet([a, b])
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.SA_INIT_SENT and b.counters["half_open_cap"] == 71
    # the flood's half-open SAs expire (30 s); the peer's SA_INIT retransmissions then get in
    net.advance(50.0)  # retransmits at 4, 11.2, 24.2, 47.5 s
    assert sa.state == IkeState.ESTABLISHED
    assert len(b._half_open) == 0 and len(b.sas) == 1
    evs = []
    while (e := a.next_event()) is not None:
        evs.append(e)
    assert any(isinstance(e, ChildSaEstablished) for e in evs)
