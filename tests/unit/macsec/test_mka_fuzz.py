"""Hostile but correctly signed MKPDUs (an insider holding the CAK) and raw garbage must never
raise out of ``MkaParticipant.receive``; the participant keeps working afterwards."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.macsec.mka import InstallRxSa, InstallTxSa, kdf
from ipsecemu.macsec.mka.mkpdu import (
    CIPHER_SUITES,
    BasicParameterSet,
    DistributedSak,
    Mkpdu,
    PeerEntry,
    SakUse,
    XpnParameterSet,
    encode_frame,
    parse_frame,
    verify,
)

from support.mka import CKN, Lan, assert_traffic, converged, make

u32 = st.integers(0, 0xFFFFFFFF)
mi = st.binary(min_size=12, max_size=12)
sci = st.sampled_from([bytes([2, 0, 0, 0, 0, i, 0, 1]) for i in range(1, 5)]) | st.binary(
    min_size=8, max_size=8
)


@st.composite
def hostile(draw: st.DrawFn, target_mi: bytes, target_mn: int, kek: bytes) -> Mkpdu:
    me = st.just(PeerEntry(target_mi, target_mn))
    entries = st.lists(me | st.builds(PeerEntry, mi, u32), max_size=3).map(tuple)
    wrapped = st.sampled_from([16, 32]).map(lambda n: kdf.wrap_sak(kek, bytes(n))) | st.binary(max_size=40)
    return Mkpdu(
        basic=BasicParameterSet(
            sci=draw(sci),
            mi=draw(mi),
            mn=draw(u32),
            ckn=CKN,
            key_server_priority=draw(st.integers(0, 255)),
            key_server=draw(st.booleans()),
        ),
        live_peers=draw(st.none() | entries),
        potential_peers=draw(st.none() | entries),
        sak_use=draw(
            st.none()
            | st.builds(
                SakUse,
                keys=st.booleans(),
                latest_an=st.integers(0, 3),
                latest_tx=st.booleans(),
                latest_rx=st.booleans(),
                latest_ks_mi=mi,
                latest_kn=u32,
                latest_lowest_pn=u32,
            )
        ),
        distributed_sak=draw(
            st.none()
            | st.builds(
                DistributedSak,
                an=st.integers(0, 3),
                confidentiality_offset=st.integers(0, 3),
                kn=u32,
                wrapped=wrapped.filter(lambda w: len(w) in (0, 24, 40)),
                cipher_suite=st.none() | st.sampled_from([*CIPHER_SUITES.values(), 0x1234]),
            ).filter(lambda d: d.cipher_suite is not None or len(d.wrapped) in (0, 24))
        ),
        xpn=draw(st.none() | st.builds(XpnParameterSet, st.integers(0, 255), u32, u32)),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_signed_hostile_mkpdus_never_crash(data: st.DataObject) -> None:
    cipher = data.draw(st.sampled_from(["gcm-aes-128", "gcm-aes-xpn-256"]))
    nodes = make(2, cipher)
    lan = Lan(nodes)
    lan.run(1.0)
    a, b = nodes
    ick = a.p._ick
    kek = a.p._kek
    for _ in range(data.draw(st.integers(1, 4))):
        m = data.draw(hostile(b.p.mi, b.p.mn, kek))
        frame = encode_frame(m, ick, m.basic.sci[:6])
        b.p.receive(frame, lan.now)
        b.drain()
        lan.step()
    for n in nodes:
        n.drain()
    # whatever it was fed, B only ever installs SAs of its configured cipher and keeps talking
    installs = [e.sa for e in b.events if isinstance(e, InstallRxSa | InstallTxSa)]
    assert installs and all(sa.cipher == cipher for sa in installs)
    out = b.p.frames_to_send(lan.now + 10.0)
    assert len(out) == 1 and verify(parse_frame(out[0]), ick)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes_and_changes_nothing(data: bytes) -> None:
    nodes = make(2)
    lan = Lan(nodes)
    lan.run(1.0)
    a, b = nodes
    b.p.receive(data, lan.now)
    b.p.receive(b"\x01\x80\xc2\x00\x00\x03" + a.p.sci[:6] + b"\x88\x8e\x03\x05" + data, lan.now)
    assert b.p.next_event() is None
    lan.run(1.0)
    converged(nodes)
    assert_traffic(a, b)
