"""IKE_SA_INIT + IKE_AUTH between two in-process peers (no sockets): proposals, identities, PSK,
NAT detection, COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN, traffic-selector narrowing.
Keys are checked by pushing ESP packets through the reference data plane in both directions."""

from __future__ import annotations

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, IdType, Notify, Payload
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet, Nat
from ipsecemu.ike.settings import Identity, IkeSaConfig
from ipsecemu.ike.states import IkeState

from support.ike_pair import A, B, esp_both_ways, events, one, pair, seeded


@pytest.mark.parametrize("ike,esp", [
    ("aes256-sha256-modp1024", "aes256-sha256"),
    ("aes128-sha1-modp2048", "aes128-sha1"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    ("aes256-sha384-x25519", "aes256-sha384"),
])
def test_establish_with_identical_keys(ike: str, esp: str) -> None:
    a, b, net = pair(ike, esp)
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    ea, eb = events(a), events(b)
    ia, ib = one(ea, ev.IkeSaEstablished), one(eb, ev.IkeSaEstablished)
    assert (ia.ike_spi_i, ia.ike_spi_r) == (ib.ike_spi_i, ib.ike_spi_r)
    assert ia.proposal == ib.proposal and ia.proposal.startswith(ike.split("-")[0])
    assert ia.remote_id == "right.example" and ib.remote_id == "left.example"
    sb = b.find(ia.ike_spi_r)
    assert sb is not None and sb.keys == sa.keys  # same SK_* on both sides
    ca, cb = one(ea, ev.ChildSaEstablished).keys, one(eb, ev.ChildSaEstablished).keys
    assert ca.inbound == cb.outbound and ca.outbound == cb.inbound
    assert ca.proposal == esp and ca.mode == "tunnel" and not ca.encap
    esp_both_ways(ca, cb)
    # 4 datagrams: IKE_SA_INIT and IKE_AUTH, request and response
    assert len(net.log) == 4 and not net.dropped


def test_reproducible_with_injected_rng() -> None:
    runs = []
    for _ in range(2):
        a, _b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16")
        a.initiate("c", 0.0)
        net.run()
        runs.append([p.data for p in net.log])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("ids", [
    ("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2"), ("alice@example.com", "bob@example.com"),
    ("@#0a0b0c", "@#0d0e0f"), ("@gw-a", "@gw-b"),
])
def test_identity_types(ids: tuple[str, str]) -> None:
    a, b, net = pair(ids=ids)
    a.initiate("c", 0.0)
    net.run()
    ia, ib = one(events(a), ev.IkeSaEstablished), one(events(b), ev.IkeSaEstablished)
    assert ia.remote_id == str(Identity.parse(ids[1])) and ib.remote_id == str(Identity.parse(ids[0]))
    # the ID type really travels on the wire
    auth_req = m.decode_message(net.log[2].data)
    assert auth_req.exchange == Exchange.IKE_AUTH
    want = {"10.0.0.1": IdType.IPV4_ADDR, "fd00::1": IdType.IPV6_ADDR, "alice@example.com": IdType.RFC822_ADDR,
            "@#0a0b0c": IdType.KEY_ID, "@gw-a": IdType.FQDN}[ids[0]]
    assert Identity.parse(ids[0]).id_type == want


def test_wrong_psk_fails_both_sides() -> None:
    a, b, net = pair(b_kw={"psk": "other"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.CLOSED
    da, db = one(events(a), ev.IkeSaDeleted), one(events(b), ev.IkeSaDeleted)
    assert da.reason == db.reason == "auth_failed" and da.notify == Notify.AUTHENTICATION_FAILED
    assert not a.sas and not b.sas


def test_unexpected_peer_identity_is_refused() -> None:
    a, b, net = pair()
    b.configs["c"].remote_id = Identity.parse("someone.else")
    a.initiate("c", 0.0)
    net.run()
    assert one(events(a), ev.IkeSaDeleted).reason == "auth_failed"
    assert one(events(b), ev.IkeSaDeleted).reason == "auth_failed"


def test_no_proposal_chosen() -> None:
    a, b, net = pair(a_kw={"ike": "aes128-sha1-modp2048"}, b_kw={"ike": "aes256gcm16-prfsha384-ecp384"})
    sa = a.initiate("c", 0.0)
    net.run()
    d = one(events(a), ev.IkeSaDeleted)
    assert d.reason == "no_proposal" and d.notify == Notify.NO_PROPOSAL_CHOSEN and sa.state == IkeState.CLOSED
    assert not b.sas  # the responder kept no state, but says why it refused (both lists)
    r = one(events(b), ev.IkeSaRefused)
    assert r.notify == Notify.NO_PROPOSAL_CHOSEN and r.conn == "c" and not r.initiator
    assert r.ours == ("aes256gcm16-prfsha384-ecp384",) and r.theirs == ("aes128-sha1-prfsha1-modp2048",)


def test_invalid_ke_payload_retry() -> None:
    # we guess modp2048 first; the responder only takes ecp256 and tells us so
    a, b, net = pair(a_kw={"ike": "aes128-sha256-modp2048-ecp256"}, b_kw={"ike": "aes128-sha256-ecp256"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    assert one(events(a), ev.IkeSaEstablished).proposal.endswith("ecp256")
    first_answer = m.decode_message(net.log[1].data)
    n = first_answer.notify(Notify.INVALID_KE_PAYLOAD)
    assert n is not None and int.from_bytes(n.data, "big") == 19
    assert len(net.log) == 6


def test_responder_settles_on_an_offered_group() -> None:
    a, b, net = pair(a_kw={"ike": "aes128-sha256-modp2048"}, b_kw={"ike": "aes128-sha256-modp2048,aes128-sha256-ecp256"})
    # responder prefers ecp256 only if offered: it is not, so it must accept modp2048 -> established
    a.initiate("c", 0.0)
    net.run()
    assert one(events(a), ev.IkeSaEstablished)


def test_cookie_challenge() -> None:
    a, b, net = pair(cookie_threshold=0)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    assert b.counters.get("cookie_sent") == 1
    # request 2 repeats the first one with the COOKIE notify first
    retry = m.decode_message(net.log[2].data)
    assert isinstance(retry.payloads[0], m.Notification) and retry.payloads[0].type == Notify.COOKIE
    assert one(events(b), ev.IkeSaEstablished)


def test_cookie_only_above_threshold() -> None:
    # three half-open SAs (their IKE_AUTH is lost) exhaust a threshold of 3; the fourth gets a cookie
    a, b, net = pair(cookie_threshold=3)
    net.filter = lambda p: m.decode_header(p.data).exchange == Exchange.IKE_SA_INIT
    for _ in range(3):
        a.initiate("c", 0.0)
        net.run()
    assert b.counters.get("cookie_sent") is None and len(b._half_open) == 3
    net.filter = lambda p: True
    sa = a.initiate("c", 0.0)
    net.run()
    assert b.counters.get("cookie_sent") == 1 and sa.state == IkeState.ESTABLISHED
    # half-open SAs time out on the responder
    net.advance(31.0)
    assert len(b._half_open) == 0


def test_nat_detected_and_float_to_4500() -> None:
    nat = Nat(inside=A[0], public="198.51.100.7")
    a, b, net = pair(nat=nat)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    ia, ib = one(events(a), ev.IkeSaEstablished), one(events(b), ev.IkeSaEstablished)
    assert ia.nat_local and not ia.nat_remote
    assert ib.nat_remote and not ib.nat_local
    assert ia.remote == (B[0], 4500) and ia.local == (A[0], 4500)
    assert ib.remote[0] == "198.51.100.7" and ib.local == (B[0], 4500)
    # IKE_AUTH went over 4500 (through the NAT mapping)
    assert net.log[2].dst == (B[0], 4500) and net.log[2].src[0] == "198.51.100.7"
    assert sa.children and next(iter(sa.children.values())).keys.encap


def test_force_encap_like_strongswan() -> None:
    a, b, net = pair(a_kw={"force_encap": True})
    sa = a.initiate("c", 0.0)
    net.run()
    ia, ib = one(events(a), ev.IkeSaEstablished), one(events(b), ev.IkeSaEstablished)
    assert not ia.nat_local and not ia.nat_remote and ib.nat_remote  # b thinks we are NATed
    assert sa.encap and ia.local[1] == 4500


def test_ts_narrowing_and_unacceptable() -> None:
    a, b, net = pair(a_kw={"local_ts": "10.1.0.0/16", "remote_ts": "10.0.0.0/8"},
                     b_kw={"local_ts": "10.2.3.0/24", "remote_ts": "10.1.0.0/16"})
    a.initiate("c", 0.0)
    net.run()
    ka = one(events(a), ev.ChildSaEstablished).keys
    assert [str(t) for t in ka.remote_ts] == ["10.2.3.0/24"] and [str(t) for t in ka.local_ts] == ["10.1.0.0/16"]
    a, b, net = pair(b_kw={"local_ts": "172.16.0.0/12"})
    sa = a.initiate("c", 0.0)
    net.run()
    evs = events(a)
    assert sa.state == IkeState.ESTABLISHED  # the IKE SA survives a refused Child SA
    assert one(evs, ev.ChildSaFailed).notify == Notify.TS_UNACCEPTABLE and not sa.children


def test_esp_no_proposal_keeps_ike_sa() -> None:
    a, b, net = pair(a_kw={"esp": "aes128-sha1"}, b_kw={"esp": "aes256gcm16"})
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    assert one(events(a), ev.ChildSaFailed).notify == Notify.NO_PROPOSAL_CHOSEN
    assert one(events(b), ev.ChildSaFailed).notify == Notify.NO_PROPOSAL_CHOSEN


def test_transport_mode() -> None:
    a, b, net = pair(a_kw={"mode": "transport"}, b_kw={"mode": "transport"})
    a.initiate("c", 0.0)
    net.run()
    assert one(events(a), ev.ChildSaEstablished).keys.mode == "transport"
    assert one(events(b), ev.ChildSaEstablished).keys.outbound.mode == "transport"


def test_unknown_status_notifies_and_vendor_ids_tolerated() -> None:
    """strongSwan sends many status notifies and vendor IDs; a hand-built IKE_SA_INIT with them works."""
    a, b, net = pair("aes128-sha256-x25519", "aes128gcm16")
    sa = a.initiate("c", 0.0)
    (wire, _r, _l), = a.datagrams_to_send(0.0)
    msg = m.decode_message(wire)
    msg.payloads += [m.Notification(Notify.IKEV2_FRAGMENTATION_SUPPORTED),
                     m.Notification(Notify.SIGNATURE_HASH_ALGORITHMS, b"\x00\x02\x00\x03"),
                     m.Notification(Notify.REDIRECT_SUPPORTED), m.Notification(40000, b"x"),
                     m.Vendor(b"strongSwan"), m.Unknown(222, b"non-critical")]
    wire2 = msg.encode()
    sa._init_req = wire2  # AUTH signs the request as sent
    b.receive_datagram(wire2, A, 0.0, B)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    # an unknown *critical* payload gets UNSUPPORTED_CRITICAL_PAYLOAD
    msg.payloads.append(m.Unknown(223, b"crit", critical=True))
    msg.spi_i = b"\x11" * 8
    b.receive_datagram(msg.encode(), A, 0.0, B)
    (reply, _r, _l), = b.datagrams_to_send(0.0)
    n = m.decode_message(reply).notify(Notify.UNSUPPORTED_CRITICAL_PAYLOAD)
    assert n is not None and n.data == bytes([223])


def test_initiator_retransmits_sa_init_and_auth() -> None:
    a, b, net = pair()
    lost: set[int] = set()

    def lose_first_of_each(p) -> bool:
        h = m.decode_header(p.data)
        key = (h.exchange << 1) | h.response
        if key in lost:
            return True
        lost.add(key)
        return False

    net.filter = lose_first_of_each
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.SA_INIT_SENT
    net.advance(60.0)
    assert sa.state == IkeState.ESTABLISHED
    assert sa.counters.get("retransmit", 0) >= 2 and b.find(sa.spi_r).counters.get("duplicate_request", 0) >= 1


def test_payload_order_of_auth_request() -> None:
    a, _b, net = pair()
    sa = a.initiate("c", 0.0)
    net.run()
    req = m.decode_message(net.log[2].data)
    inner = m.decrypt(req, net.log[2].data, __import__("ipsecemu.ike.crypto", fromlist=["SkCipher"]).SkCipher(
        12, sa.keys.sk_ei, 12, sa.keys.sk_ai))
    kinds = [p.ptype for p in inner]
    assert kinds[0] == Payload.IDi and Payload.AUTH in kinds and kinds[-2:] == [Payload.TSi, Payload.TSr]


def test_responder_picks_config_by_proposal_and_identity() -> None:
    """Two responder configs: the one whose IKE proposal matches serves IKE_SA_INIT, then IKE_AUTH
    switches by the initiator's identity (with that config's PSK and selectors)."""
    a1 = IkeEndpoint([IkeSaConfig.simple("x", "psk-x", "site-x", "hub", ike="aes128-sha256-ecp256",
                                         remote_addr=B, local_ts="10.8.0.0/16", remote_ts="10.2.0.0/16")], A)
    hub = IkeEndpoint([
        IkeSaConfig.simple("y", "psk-y", "hub", "site-y", ike="aes256-sha384-x25519", local_ts="10.2.0.0/16",
                           remote_ts="10.9.0.0/16"),
        IkeSaConfig.simple("x", "psk-x", "hub", "site-x", ike="aes128-sha256-ecp256", local_ts="10.2.0.0/16",
                           remote_ts="10.8.0.0/16"),
    ], B)
    net = LoopbackNet([a1, hub])
    sa = a1.initiate("x", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    e = one(events(hub), ev.IkeSaEstablished)
    assert e.remote_id == "site-x" and hub.find(sa.spi_r).config.name == "x"


def test_states_as_data() -> None:
    from ipsecemu.ike.states import TRANSITIONS, check, dot

    assert all(s.value in dot() for s in IkeState)
    with pytest.raises(AssertionError):
        check(IkeState.CLOSED, IkeState.ESTABLISHED)
    assert (IkeState.SA_INIT_DONE, IkeState.ESTABLISHED) in TRANSITIONS


def test_nat_rebinding_is_followed() -> None:
    nat = Nat(inside=A[0], public="198.51.100.7")
    a, b, net = pair(nat=nat)
    sa = a.initiate("c", 0.0)
    net.run()
    sb = b.find(sa.spi_r)
    events(a), events(b)
    old = sb.remote
    nat._map.clear()  # the NAT forgets its mappings: the next packet gets a new public port
    nat._map[(A[0], 4500)] = ("198.51.100.7", 40000)
    sa.dpd(net.now)
    net.run()
    assert sb.remote == ("198.51.100.7", 40000) != old
    moved = one(events(b), ev.PeerAddressChanged)
    assert moved.remote == sb.remote
    # neither a tampered nor a replayed request from elsewhere moves it
    sa.dpd(net.now)
    (wire, _r, _l), = a.datagrams_to_send(net.now)
    bad = bytearray(wire)
    bad[-1] ^= 1
    b.receive_datagram(bytes(bad), ("203.0.113.9", 4500), net.now, (B[0], 4500))
    last = [p for p in net.log if p.dst[0] == B[0]][-1]
    b.receive_datagram(last.data, ("203.0.113.9", 4500), net.now, (B[0], 4500))
    assert sb.remote == ("198.51.100.7", 40000) and sb.counters["integrity"] == 1


def test_two_bare_ike_sas_without_an_endpoint() -> None:
    """The documented low-level use: two IkeSa objects, datagrams moved by hand."""
    from ipsecemu.ike.sa import IkeSa

    ca = IkeSaConfig.simple("c", "k", "a", "b", ike="aes128gcm16-prfsha256-x25519", esp="aes128gcm16", remote_addr=B)
    cb = IkeSaConfig.simple("c", "k", "b", "a", ike="aes128gcm16-prfsha256-x25519", esp="aes128gcm16")
    ia = IkeSa(ca, initiator=True, local=A, rng=seeded(5))
    rb = IkeSa(cb, initiator=False, local=B, remote=A, rng=seeded(6))
    ia.initiate(0.0)
    for _ in range(4):
        for src, dst in ((ia, rb), (rb, ia)):
            for data, remote, local in src.datagrams_to_send(0.0):
                dst.receive_datagram(data, local, 0.0, remote)
    assert ia.state == rb.state == IkeState.ESTABLISHED
    assert isinstance(ia.next_event(), ev.IkeSaEstablished) and isinstance(rb.next_event(), ev.IkeSaEstablished)
    assert ia.get_timer() is not None  # rekey/expiry timers are armed
