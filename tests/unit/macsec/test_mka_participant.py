"""MKA participants talking to each other in one process, with the reference SecY as data plane.

A tiny "LAN" delivers every MKPDU to every other participant; each node applies its SA events
to a real ``MacsecRx`` / ``MacsecTx`` from ``ipsecemu.dataplane.backend("reference")``, so the
tests check that the keys MKA agrees on actually protect and validate frames both ways.
"""

from __future__ import annotations

import itertools

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import Verdict
from ipsecemu.macsec.mka import (
    InstallRxSa,
    InstallTxSa,
    KeyServerElected,
    MkaParticipant,
    PeerLive,
    PeerLost,
    RemoveSa,
)
from ipsecemu.macsec.mka.mkpdu import parse_frame

from support.mka import CAK, CIPHERS, CKN, DP, Lan, Node, assert_traffic, converged, mac, make, seeded


@pytest.mark.parametrize(("cipher", "include_sci"), list(itertools.product(CIPHERS, [True, False])))
def test_two_participants_agree_and_protect_both_ways(cipher: str, include_sci: bool) -> None:
    a, b = make(2, cipher, include_sci)
    lan = Lan([a, b])
    lan.run(1.0)
    converged([a, b])
    assert a.p.is_key_server and not b.p.is_key_server  # equal priority: lower SCI wins
    assert a.tx_sa.cipher == cipher and a.tx_sa.sak == b.tx_sa.sak  # type: ignore[union-attr]
    assert len(a.tx_sa.sak) == (32 if cipher.endswith("256") else 16)  # type: ignore[union-attr]
    if "xpn" in cipher:
        assert (a.tx_sa.ssci, b.tx_sa.ssci) == (1, 2)  # type: ignore[union-attr]
        ks_mi, kn, _an = a.p.latest_key  # type: ignore[misc]
        assert a.tx_sa.salt == b.tx_sa.salt and a.tx_sa.salt[4:] == ks_mi[4:]  # type: ignore[union-attr,index]
    else:
        assert a.tx_sa.ssci is None and a.tx_sa.salt is None  # type: ignore[union-attr]
    assert_traffic(a, b)
    assert_traffic(b, a)
    # Rx before Tx on both sides
    for n in (a, b):
        kinds = [type(e) for e in n.events if isinstance(e, InstallRxSa | InstallTxSa)]
        assert kinds == [InstallRxSa, InstallTxSa]
    # the SecTAG carries the SCI only when asked to
    frame = a.protect(mac(9), b"x" * 60)
    assert frame[12:14] == b"\x88\xe5" and bool(frame[14] & 0x20) == include_sci


def test_mkpdus_on_the_wire_are_well_formed_and_periodic() -> None:
    a, b = make(2, "gcm-aes-xpn-128")
    lan = Lan([a, b])
    lan.run(10.0)
    converged([a, b])
    from_a = [(t, parse_frame(f).mkpdu) for t, i, f in lan.log if i == 0]
    mns = [m.basic.mn for _, m in from_a]
    assert mns == list(range(1, len(mns) + 1))  # message numbers count up from 1
    # once quiet, one MKPDU per hello time (2 s)
    quiet = [t for t, m in from_a if t >= 3.0]
    gaps = {round(y - x, 6) for x, y in itertools.pairwise(quiet)}
    assert gaps == {2.0}
    last = from_a[-1][1]
    assert last.basic.key_server and last.live_peers and last.live_peers[0].mi == b.p.mi
    assert last.sak_use is not None and last.sak_use.latest_tx and last.sak_use.latest_rx
    assert last.xpn is not None and last.key_server_ssci == 1
    assert last.distributed_sak is None  # stops once every peer confirmed the SAK
    first_dist = next(m for _, m in from_a if m.distributed_sak is not None).distributed_sak
    assert first_dist.cipher_suite == 0x0080C20001000003 and len(first_dist.wrapped) == 24
    assert first_dist.confidentiality_offset == 1


def test_same_random_source_gives_identical_frames() -> None:
    def transcript() -> list[bytes]:
        lan = Lan(make(2, "gcm-aes-256"))
        lan.run(5.0)
        return [f for _, _, f in lan.log]

    assert transcript() == transcript()


@pytest.mark.parametrize(
    ("prios", "winner"),
    [([0x10, 0x01], 1), ([0x01, 0x10], 0), ([0x20, 0x20], 0), ([255, 0x80], 1)],
)
def test_key_server_election(prios: list[int], winner: int) -> None:
    nodes = make(2, prios=prios)
    lan = Lan(nodes)
    lan.run(1.0)
    converged(nodes)
    assert [n.p.is_key_server for n in nodes] == [i == winner for i in range(2)]
    ks_sci = nodes[winner].p.sci
    for n in nodes:
        elected = [e for e in n.events if isinstance(e, KeyServerElected)]
        assert elected[-1].sci == ks_sci and elected[-1].is_self == (n is nodes[winner])
    assert nodes[0].p.latest_key[0] == nodes[winner].p.mi  # type: ignore[index]


def test_nobody_may_be_key_server() -> None:
    nodes = make(2, prios=[255, 255])
    lan = Lan(nodes)
    lan.run(3.0)
    assert all(n.p.live_peers for n in nodes)  # live, but no key server and no SAK
    assert all(n.p.key_server is None and n.p.latest_key is None and n.tx is None for n in nodes)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_three_participants(cipher: str) -> None:
    nodes = make(3, cipher, prios=[0x30, 0x10, 0x20])
    lan = Lan(nodes)
    lan.run(2.0)
    converged(nodes)
    assert [n.p.is_key_server for n in nodes] == [False, True, False]
    for a, b in itertools.permutations(nodes, 2):
        assert_traffic(a, b)
    if "xpn" in cipher:
        assert sorted(n.tx_sa.ssci for n in nodes) == [1, 2, 3]  # type: ignore[union-attr]


def test_rekey_is_make_before_break() -> None:
    a, b = make(2, "gcm-aes-xpn-256")
    lan = Lan([a, b])
    lan.run(1.0)
    _, kn1, an1 = a.p.latest_key  # type: ignore[misc]
    old_sak = a.tx_sa.sak  # type: ignore[union-attr]
    in_flight = b.protect(mac(1), b"sent with the old key")
    a.events.clear()
    b.events.clear()
    assert a.p.rekey() is True
    lan.step()  # A sends the new SAK; B installs Rx for it
    assert a.rx.validate(in_flight).verdict == Verdict.OK  # the old Rx SA is still there
    lan.run(1.0)
    converged([a, b])
    _, kn2, an2 = a.p.latest_key  # type: ignore[misc]
    assert (kn2, an2) == (kn1 + 1, (an1 + 1) % 4)
    assert a.tx_sa.sak != old_sak and a.tx_sa.an == an2  # type: ignore[union-attr]
    for n, peer in ((a, b), (b, a)):
        seq = [
            (type(e).__name__, getattr(e, "direction", ""), e.sa.an if hasattr(e, "sa") else e.an)
            for e in n.events
        ]
        assert seq == [
            ("InstallRxSa", "", an2),
            ("InstallTxSa", "", an2),
            ("RemoveSa", "tx", an1),
            ("RemoveSa", "rx", an1),
        ], seq
        assert set(n.p.installed_rx) == {(peer.p.sci, an2)}
    assert_traffic(a, b)
    assert_traffic(b, a)
    # a late frame under the removed key is no longer accepted
    assert a.rx.validate(in_flight).verdict == Verdict.UNKNOWN_SA


def test_pn_exhaustion_from_the_data_plane_triggers_rotation() -> None:
    a, b = make(2, "gcm-aes-128")
    lan = Lan([a, b])
    lan.run(1.0)
    kn1 = a.p.latest_key[1]  # type: ignore[index]
    # B (not the key server) transmits on an SA whose soft PN threshold is close
    b.secy = b.p.secy_config(pn_exhaustion_threshold=4)
    b.tx = DP.MacsecTx(b.secy, b.tx_sa)
    for _ in range(3):
        b.protect(mac(1), b"data")
    soft = [e for e in b.tx.poll_events() if e.kind == "soft" and e.reason == "pn"]  # type: ignore[attr-defined]
    assert soft
    b.p.pn_exhausting()
    lan.run(1.0)
    converged([a, b])
    assert a.p.latest_key[1] == kn1 + 1  # type: ignore[index]
    assert_traffic(b, a)
    # the key server's own soft event rotates at once
    a.p.pn_exhausting()
    lan.run(1.0)
    converged([a, b])
    assert a.p.latest_key[1] == kn1 + 2  # type: ignore[index]


def test_non_key_server_rekey_asks_the_key_server() -> None:
    a, b = make(2, "gcm-aes-xpn-128")
    lan = Lan([a, b])
    lan.run(1.0)
    kn1 = a.p.latest_key[1]  # type: ignore[index]
    assert b.p.rekey() is False
    lan.run(1.0)
    converged([a, b])
    assert b.p.latest_key[1] == kn1 + 1  # type: ignore[index]


def test_silent_peer_is_dropped_and_its_sas_removed() -> None:
    nodes = make(3, "gcm-aes-xpn-128", life_time=6.0)
    a, b, c = nodes
    lan = Lan(nodes)
    lan.run(2.0)
    converged(nodes)
    kn1 = a.p.latest_key[1]  # type: ignore[index]
    c_an = c.tx_sa.an  # type: ignore[union-attr]
    c.silent = True
    last_c = max(t for t, i, _ in lan.log if i == 2)
    while lan.now < last_c + 5.8:
        lan.step()
    assert (c.p.sci, c_an) in a.p.installed_rx  # still within the 6 s life time
    while lan.now < last_c + 6.2:
        lan.step()
    for n in (a, b):
        lost = [e for e in n.events if isinstance(e, PeerLost)]
        assert [e.sci for e in lost] == [c.p.sci]
        assert any(isinstance(e, RemoveSa) and e.sci == c.p.sci and e.direction == "rx" for e in n.events)
    lan.run(1.0)
    for n in (a, b):
        assert all(sci != c.p.sci for sci, _ in n.p.installed_rx)
        assert [s for s, _ in n.p.live_peers] == [m.p.sci for m in (a, b) if m is not n]
    converged([a, b])
    assert a.p.latest_key[1] == kn1 + 1  # type: ignore[index]  # membership changed: fresh SAK
    assert_traffic(a, b)
    assert_traffic(b, a)


def test_last_peer_gone_removes_everything() -> None:
    a, b = make(2)
    lan = Lan([a, b])
    lan.run(1.0)
    b.silent = True
    lan.run(8.0)
    assert a.p.live_peers == [] and a.p.latest_key is None and a.p.key_server is None
    assert a.tx is None and a.p.installed_tx is None and a.p.installed_rx == {}
    assert any(isinstance(e, RemoveSa) and e.direction == "tx" for e in a.events)
    # and it comes back when the peer does
    b.silent = False
    lan.run(8.0)
    converged([a, b])
    assert_traffic(b, a)


def test_wrong_cak_never_becomes_live() -> None:
    a, b = make(2)
    c = Node(MkaParticipant(bytes(16), CKN, mac(3) + b"\x00\x01", 0x01, random=seeded(7)))  # best priority
    lan = Lan([a, b, c])
    lan.run(5.0)
    converged([a, b])
    assert a.p.is_key_server  # c's better priority does not count: it never gets live
    assert c.p.live_peers == [] and c.p.potential_peers == [] and c.p.latest_key is None
    assert all(sci != c.p.sci for sci, _ in a.p.live_peers + a.p.potential_peers)
    assert a.p.counters.bad_icv > 0 and c.p.counters.bad_icv > 0
    assert not any(isinstance(e, InstallRxSa) for e in c.events)


def test_other_ckn_is_ignored() -> None:
    a, b = make(2)
    other = MkaParticipant(CAK, b"another CA", mac(3) + b"\x00\x01", random=seeded(9))
    frame = other.frames_to_send(0.0)[0]
    a.p.receive(frame, 0.0)
    assert a.p.counters.other_ca == 1 and a.p.potential_peers == []


def snapshot(n: Node) -> tuple:
    p = n.p
    return (
        sorted(p.live_peers),
        sorted(p.potential_peers),
        p.latest_key,
        p.key_server,
        dict(p.installed_rx),
        p.installed_tx,
        p.mn,
        p.get_timer(),
        [(q.mi, q.mn) for q in p._peers.values()],
    )


def test_bad_icv_replay_and_garbage_change_nothing() -> None:
    a, b = make(2, "gcm-aes-xpn-128")
    lan = Lan([a, b])
    lan.run(1.0)
    lan.run(2.0)
    a.events.clear()
    frame = a.p.frames_to_send(lan.now + 5.0)[0]  # a fresh, valid MKPDU (new MN) from A
    before = snapshot(b)
    counters = dict(vars(b.p.counters))
    for pos in (22, 45, len(frame) - 1):  # SCI, MN, ICV
        bad = bytearray(frame)
        bad[pos] ^= 0x01
        b.p.receive(bytes(bad), lan.now)
    b.p.receive(frame[:30], lan.now)
    b.p.receive(b"\x00" * 100, lan.now)
    assert b.p.counters.bad_icv == counters["bad_icv"] + 3
    assert b.p.counters.malformed == counters["malformed"] + 2
    assert snapshot(b) == before and b.p.next_event() is None
    # the genuine frame is accepted once, its replay is not
    b.p.receive(frame, lan.now)
    assert b.p.counters.rx_ok == counters["rx_ok"] + 1
    after = snapshot(b)
    b.p.receive(frame, lan.now)
    assert b.p.counters.replay == counters["replay"] + 1 and snapshot(b) == after


def test_peer_restart_with_new_mi_replaces_the_old_instance() -> None:
    a, b = make(2)
    lan = Lan([a, b])
    lan.run(1.0)
    old_mi = b.p.mi
    b.p = MkaParticipant(CAK, CKN, b.p.sci, random=seeded(42))
    b.rx = DP.MacsecRx(b.secy)
    b.tx = b.tx_sa = None
    lan.run(2.0)
    converged([a, b])
    assert any(isinstance(e, PeerLost) and e.mi == old_mi for e in a.events)
    assert [mi for _, mi in a.p.live_peers] == [b.p.mi]
    assert_traffic(a, b)


def test_peer_live_events() -> None:
    a, b = make(2)
    lan = Lan([a, b])
    lan.run(1.0)
    assert [e.sci for e in a.events if isinstance(e, PeerLive)] == [b.p.sci]


def test_timer_and_hello() -> None:
    (a,) = make(1)
    assert a.p.get_timer() is None
    assert len(a.p.frames_to_send(0.0)) == 1
    assert a.p.get_timer() == 2.0
    assert a.p.frames_to_send(1.9) == []
    assert len(a.p.frames_to_send(2.0)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cipher": "gcm-aes-512"}, "cipher"),
        ({"sci": b"\x00" * 7}, "sci"),
        ({"include_sci": False, "sci": mac(1) + b"\x00\x02"}, "port"),
        ({"cak": bytes(20)}, "cak"),
        ({"ckn": b""}, "ckn"),
        ({"key_server_priority": 256}, "priority"),
        ({"hello_time": 7.0}, "hello_time"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    args: dict = {"cak": CAK, "ckn": CKN, "sci": mac(1) + b"\x00\x01"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        MkaParticipant(**args)


def test_repr_hides_keys() -> None:
    (a,) = make(1)
    assert CAK.hex() not in repr(a.p) and "cak" not in repr(a.p).lower()


def test_message_number_exhaustion_starts_a_new_member_identity() -> None:
    a, b = make(2)
    lan = Lan([a, b])
    lan.run(1.0)
    old_mi = a.p.mi
    a.p.mn = 0xFFFFFFFF
    lan.run(3.0)
    assert a.p.mi != old_mi and a.p.mn < 10
    assert any(isinstance(e, PeerLost) and e.mi == old_mi for e in b.events)
    converged([a, b])
    assert_traffic(a, b)
    assert_traffic(b, a)


@pytest.mark.parametrize("frozen", ["member", "key server"])
def test_frozen_peer_resumes_past_the_life_time_and_is_secured_again(frozen: str) -> None:
    """b is frozen (SIGSTOP: no timers, no sends, received frames queue up) longer than the life
    time, then resumes.  a dropped b and tore down; b first reads a's queued MKPDUs, which still
    list it, so b keeps its old key.  a's next SAK must take the next AN (not AN 0 again), and no
    removal meant for b's old key may take the new SA: both ends end up secured (issue 11/13)."""
    a, b = make(2, life_time=6.0)
    if frozen == "key server":  # make() gives node 0 the lowest SCI: the key server
        b, a = a, b
    lan = Lan([a, b])
    lan.run(2.0)
    converged([a, b])
    assert b.p.is_key_server == (frozen == "key server")
    old_an = a.tx_sa.an  # type: ignore[union-attr]
    queued: list[bytes] = []
    while lan.now < 10.0:  # b frozen: a keeps talking, b neither runs nor answers
        t = a.p.get_timer()
        if t is not None and t <= lan.now:
            a.p.handle_timer(lan.now)
        queued += a.p.frames_to_send(lan.now)
        a.drain()
        lan.now = round(lan.now + 0.1, 6)
    assert a.p.latest_key is None and a.tx is None  # a gave b up
    assert b.tx_sa is not None  # b does not know yet
    for f in queued:  # resumed: the socket queue first
        b.p.receive(f, lan.now)
    b.drain()
    lan.run(4.0)
    converged([a, b])
    assert a.tx_sa.an != old_an  # type: ignore[union-attr]  # the next AN, not a reused one
    assert_traffic(a, b)
    assert_traffic(b, a)


def test_a_new_key_under_a_reused_an_survives_the_old_keys_removal() -> None:
    """Even when the new SAK does reuse the AN (a restarted key server starts at AN 0), the
    removal of the old key's SAs must not remove the new ones: SAs are keyed by (AN, KI)."""
    a, b = make(2, life_time=6.0)
    lan = Lan([a, b])
    lan.run(2.0)
    converged([a, b])
    an = a.tx_sa.an  # type: ignore[union-attr]
    a.p._last_an = (an - 1) % 4  # as after a restart: the next SAK gets the same AN
    assert a.p.rekey()
    lan.run(3.0)
    converged([a, b])
    assert a.tx_sa.an == an  # type: ignore[union-attr]
    assert a.p.latest_key[1] == 2  # type: ignore[index]
    assert_traffic(a, b)
    assert_traffic(b, a)
