"""IKE fragmentation (RFC 7383) between in-process peers and on the codec level.

Certificate authentication (RSA 2048, a chain) makes IKE_AUTH big; a small ``fragment_size``
makes both IKE_AUTH messages go as SKF fragments.  Checked: negotiation, every datagram within the
budget, out-of-order and lost fragments (hypothesis), duplicates, tampering, limits, and that the
keys that come out still carry ESP both ways.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecemu.ike import events as ev
from ipsecemu.ike import fragments as fr
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, Notify, Payload
from ipsecemu.ike.crypto import SkCipher
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import IntegrityError
from ipsecemu.ike.loopback import LoopbackNet, Packet
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.ike.states import IkeState

from support.certs import creds, make_ca, make_cert
from support.ike_pair import A, B, esp_both_ways, events, one, seeded

FRAG = 700  # IP datagram size: IKE messages above 672 bytes get fragmented


@pytest.fixture(scope="module")
def pki():
    ca = make_ca(kind="rsa")
    return ca, make_cert(ca, "left", "rsa", ("left.example",)), make_cert(ca, "right", "rsa", ("right.example",))


def frag_pair(pki, *, a_kw: dict | None = None, b_kw: dict | None = None,
              ike: str = "aes256-sha256-modp2048") -> tuple[IkeEndpoint, IkeEndpoint, LoopbackNet]:
    ca, left, right = pki
    kw = {"ike": ike, "fragment_size": FRAG}
    ca_ = IkeSaConfig.simple("c", b"", "left.example", "right.example", local_ts="10.1.0.0/16",
                             remote_ts="10.2.0.0/16", remote_addr=B, certs=creds(left, ca[0]), **{**kw, **(a_kw or {})})
    cb_ = IkeSaConfig.simple("c", b"", "right.example", "left.example", local_ts="10.2.0.0/16",
                             remote_ts="10.1.0.0/16", certs=creds(right, ca[0]), **{**kw, **(b_kw or {})})
    a, b = IkeEndpoint([ca_], A, rng=seeded(1)), IkeEndpoint([cb_], B, rng=seeded(2))
    return a, b, LoopbackNet([a, b])


def _skf(data: bytes) -> bool:
    return len(data) > 16 and data[16] == Payload.SKF


@pytest.mark.parametrize("ike", ["aes256-sha256-modp2048", "aes256gcm16-prfsha384-ecp384", "3des-sha1-modp1024"])
def test_ike_auth_is_fragmented_both_ways_and_works(pki, ike: str) -> None:
    a, b, net = frag_pair(pki, ike=ike)
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error
    assert sa.frag_ok
    init_req = m.decode_message(net.log[0].data)
    assert init_req.notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    frags = [p for p in net.log if _skf(p.data)]
    req = [p for p in frags if p.src == A]
    resp = [p for p in frags if p.src == B]
    assert len(req) >= 2 and len(resp) >= 2
    budget = FRAG - 28
    assert all(len(p.data) <= budget for p in net.log[2:])
    # every fragment is a whole IKE message: same message ID, numbered 1..N of N
    nums = sorted(struct.unpack_from("!HH", p.data, 32) for p in req)
    assert nums == [(i, len(req)) for i in range(1, len(req) + 1)]
    assert {m.decode_header(p.data).msg_id for p in req} == {1}
    assert sa.counters["fragmented"] == 1 and sa.counters["reassembled"] == 1
    esp_both_ways(one(events(a), ev.ChildSaEstablished).keys, one(events(b), ev.ChildSaEstablished).keys)


def test_not_fragmented_when_the_peer_does_not_support_it(pki) -> None:
    a, b, net = frag_pair(pki, b_kw={"fragmentation": False})
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED and not sa.frag_ok
    resp = m.decode_message(net.log[1].data)
    assert resp.notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED) is None
    assert not any(_skf(p.data) for p in net.log)
    assert max(len(p.data) for p in net.log) > FRAG  # the big IKE_AUTH went whole


def test_small_messages_are_not_fragmented(pki) -> None:
    a, b, net = frag_pair(pki)
    sa = a.initiate("c", net.now)
    net.run()
    n = len(net.log)
    sa.rekey_child(next(iter(sa.children)), net.now)
    net.run()
    # CREATE_CHILD_SA and the INFORMATIONAL deleting the old Child SA: one datagram each way each
    assert not any(_skf(p.data) for p in net.log[n:]) and len(net.log) == n + 4


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_out_of_order_fragments_still_establish(pki, seed: int) -> None:
    a, b, net = frag_pair(pki)
    r = random.Random(seed)

    def shuffle(batch: list[Packet]) -> list[Packet]:
        batch = list(batch)
        r.shuffle(batch)
        return batch

    net.reorder = shuffle
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0.05, 0.4))
def test_lost_fragments_are_recovered_by_retransmission(pki, seed: int, loss: float) -> None:
    """Random loss on every datagram (fragments included); retransmissions resend all fragments,
    a repeated request is answered from the cached (fragmented) response."""
    a, b, net = frag_pair(pki, a_kw={"retransmit_tries": 12, "retransmit_timeout_s": 1.0, "retransmit_base": 1.0},
                          b_kw={"half_open_timeout_s": 60.0})
    r = random.Random(seed)
    net.filter = lambda p: r.random() > loss
    sa = a.initiate("c", net.now)
    net.advance(30)
    if sa.state != IkeState.ESTABLISHED:
        # so much loss that IKE_SA_INIT or a whole round never got through: only an orderly failure
        assert sa.state in (IkeState.CLOSED, IkeState.SA_INIT_SENT, IkeState.AUTH_SENT)
        return
    bs = [s for s in b.sas.values() if s.state == IkeState.ESTABLISHED]
    assert len(bs) == 1 and bs[0].keys.sk_d == sa.keys.sk_d


def test_duplicate_and_tampered_fragments(pki) -> None:
    a, b, net = frag_pair(pki)
    sa = a.initiate("c", net.now)
    for d, _r, _l in a.datagrams_to_send(net.now):  # IKE_SA_INIT there and back
        b.receive_datagram(d, A, net.now, B)
    for d, _r, _l in b.datagrams_to_send(net.now):
        a.receive_datagram(d, B, net.now, A)
    req = a.datagrams_to_send(net.now)
    assert len(req) >= 2 and all(_skf(d) for d, _r, _l in req)
    (bsa,) = b.sas.values()
    first, *rest = req
    bad = bytearray(first[0])
    bad[-1] ^= 1
    b.receive_datagram(bytes(bad), A, net.now, B)
    assert bsa.counters["integrity"] == 1 and bsa._reasm.pending() == 0
    b.receive_datagram(first[0], A, net.now, B)
    b.receive_datagram(first[0], A, net.now, B)
    assert bsa.counters["fragment_duplicate"] == 1 and bsa._reasm.pending() == 1
    for d, _r, _l in rest:
        b.receive_datagram(d, A, net.now, B)
    assert bsa.state == IkeState.ESTABLISHED
    resp = b.datagrams_to_send(net.now)
    assert len(resp) >= 2
    # the whole request again (the initiator did not hear us): one cached answer, on fragment 1
    for d, _r, _l in req:
        b.receive_datagram(d, A, net.now, B)
    again = b.datagrams_to_send(net.now)
    assert [d for d, _r, _l in again] == [d for d, _r, _l in resp]
    for d, _r, _l in resp:
        a.receive_datagram(d, B, net.now, A)
    assert sa.state == IkeState.ESTABLISHED


# --- codec level --------------------------------------------------------------------------------

def _cipher(aead: bool) -> tuple[SkCipher, SkCipher]:
    if aead:
        k = bytes(range(36))
        return SkCipher(20, k, None, b""), SkCipher(20, k, None, b"")
    return SkCipher(12, bytes(32), 12, bytes(range(32))), SkCipher(12, bytes(32), 12, bytes(range(32)))


def _big_message(n: int) -> m.Message:
    payloads: list = [m.Vendor(bytes([i % 251]) * (50 + 37 * i)) for i in range(n)]
    return m.Message(b"\x01" * 8, b"\x02" * 8, Exchange.IKE_AUTH, 1, True, False, payloads)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), size=st.integers(300, 1400), aead=st.booleans(), order=st.randoms(use_true_random=False),
       dup=st.integers(0, 3))
def test_fragment_reassemble_any_order(n: int, size: int, aead: bool, order: random.Random, dup: int) -> None:
    tx, rx = _cipher(aead)
    msg = _big_message(n)
    rng = random.Random(1)
    frags = fr.fragment(msg, tx, rng.randbytes, size)
    assert all(len(f) <= size for f in frags)
    # every fragment is a valid IKE message
    assert all(m.decode_header(f).msg_id == 1 for f in frags)
    seq = frags + frags[:dup]
    order.shuffle(seq)
    r = fr.Reassembler()
    counts: list[str] = []
    done, seen = None, set()
    for f in seq:
        seen.add(f)
        got = r.add(False, 1, fr.open_fragment(f, rx), 0.0, counts.append)
        if got is not None:
            # complete exactly when the last missing fragment came in (the SA then moves on to
            # the next message ID, so later duplicates never reach the reassembler)
            assert seen == set(frags)
            done = got
            break
        assert seen != set(frags)
    assert done is not None
    first, inner = done
    assert first == Payload.VENDOR and inner == m.encode_payloads(msg.payloads)
    assert [p.data for p in m.decode_payloads(first, inner)] == [p.data for p in msg.payloads]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 10), lost=st.data())
def test_missing_fragment_holds_the_message(n: int, lost: st.DataObject) -> None:
    tx, rx = _cipher(True)
    frags = fr.fragment(_big_message(n), tx, random.Random(2).randbytes, 400)
    miss = lost.draw(st.integers(0, len(frags) - 1))
    r = fr.Reassembler()
    for i, f in enumerate(frags):
        if i != miss:
            assert r.add(True, 5, fr.open_fragment(f, rx), 1.0, lambda _w: None) is None
    assert r.add(True, 5, fr.open_fragment(frags[miss], rx), 2.0, lambda _w: None) is not None
    assert r.pending() == 0


def test_reassembly_limits() -> None:
    tx, rx = _cipher(True)
    counts: list[str] = []
    r = fr.Reassembler()
    # Total Fragments beyond the limit, and fragment number 0 / above the total: refused
    for number, total in ((1, fr.MAX_FRAGMENTS + 1), (0, 2), (3, 2)):
        r.add(False, 1, fr.Fragment(number, total, 0, b"x"), 0.0, counts.append)
    assert counts == ["fragment_invalid"] * 3 and r.pending() == 0
    # too much plaintext in total: the collection is dropped
    big = b"y" * (fr.MAX_MESSAGE // 3 + 1)
    for i in range(1, 4):
        r.add(False, 1, fr.Fragment(i, 8, 0, big), 0.0, counts.append)
    assert counts[-1] == "fragment_too_big" and r.pending() == 0
    # a partial message times out; a newer fragment starts over
    r.add(False, 2, fr.Fragment(1, 2, 33, b"a"), 0.0, counts.append)
    r.add(False, 2, fr.Fragment(2, 2, 0, b"b"), fr.TIMEOUT_S + 1, counts.append)
    assert counts[-2:] == ["fragment_timeout", "fragment_held"] and r.pending() == 1
    # a smaller Total Fragments is stale, a larger one restarts (sender re-fragmented)
    r.add(False, 3, fr.Fragment(1, 3, 33, b"a"), 50.0, counts.append)
    r.add(False, 3, fr.Fragment(2, 2, 0, b"b"), 50.0, counts.append)
    assert counts[-1] == "fragment_stale"
    r.add(False, 3, fr.Fragment(1, 4, 33, b"a"), 50.0, counts.append)
    assert r.pending() == 1


def test_tampered_or_malformed_fragment_is_an_integrity_error() -> None:
    tx, rx = _cipher(False)
    f = fr.fragment(_big_message(6), tx, random.Random(3).randbytes, 500)[1]
    for bad in (f[:-1] + bytes([f[-1] ^ 1]),  # ICV
                f[:34] + bytes([f[34] ^ 1]) + f[35:],  # the fragment number is authenticated
                f[:40]):  # truncated
        with pytest.raises(IntegrityError):
            fr.open_fragment(bad, rx)


def test_yaml_fragmentation_options_reach_the_core() -> None:
    from ipsecemu.base.errors import ConfigError
    from ipsecemu.config.connection import loads, parse_connection
    from ipsecemu.config.connection_dump import dumps
    from ipsecemu.config.connection_ike import to_ike_sa_config

    base = {"remote_address": "192.0.2.2", "local_id": "left.example", "psk": "s3cret"}
    core = to_ike_sa_config(parse_connection(base))
    assert core.fragmentation and core.fragment_size == 1280
    conn = parse_connection({**base, "fragmentation": "no", "fragment_size": 600})
    core = to_ike_sa_config(conn)
    assert not core.fragmentation and core.fragment_size == 600
    assert loads(dumps([conn], include_secret=True))[0] == conn
    for bad, where in (({"fragment_size": 100}, "fragment_size"), ({"fragmentation": "maybe"}, "fragmentation")):
        with pytest.raises(ConfigError, match=where):
            parse_connection({**base, **bad})


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mangled_fragments_never_raise_or_change_state(pki, data: st.DataObject) -> None:
    """Truncations, bit flips and header lies on real IKE_AUTH fragments: counted and dropped, the
    responder stays half-open, and the genuine fragments still complete the exchange."""
    a, b, net = frag_pair(pki)
    sa = a.initiate("c", net.now)
    for d, _r, _l in a.datagrams_to_send(net.now):
        b.receive_datagram(d, A, net.now, B)
    for d, _r, _l in b.datagrams_to_send(net.now):
        a.receive_datagram(d, B, net.now, A)
    req = [d for d, _r, _l in a.datagrams_to_send(net.now)]
    (bsa,) = b.sas.values()
    for _ in range(data.draw(st.integers(1, 6))):
        raw = bytearray(data.draw(st.sampled_from(req)))
        how = data.draw(st.sampled_from(["flip", "truncate", "number", "total", "length"]))
        if how == "flip":
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif how in ("number", "total"):
            struct.pack_into("!H", raw, 32 if how == "number" else 34, data.draw(st.integers(0, 0xFFFF)))
        else:
            struct.pack_into("!H", raw, 30, data.draw(st.integers(0, 0xFFFF)))
        b.receive_datagram(bytes(raw), A, net.now, B)
        assert bsa.state == IkeState.SA_INIT_DONE
        # The one answer allowed: a flipped major-version bit gets the unauthenticated
        # INVALID_MAJOR_VERSION notify that RFC 7296 sections 1.5 and 2.5 ask for; nothing else.
        for out, _r, _l in b.datagrams_to_send(net.now):
            notes = [p for p in m.decode_message(out).payloads if isinstance(p, m.Notification)]
            assert raw[17] >> 4 != 2 and [n.type for n in notes] == [Notify.INVALID_MAJOR_VERSION], out.hex()
    for d in req:
        b.receive_datagram(d, A, net.now, B)
    assert bsa.state == IkeState.ESTABLISHED
    for d, _r, _l in b.datagrams_to_send(net.now):
        a.receive_datagram(d, B, net.now, A)
    assert sa.state == IkeState.ESTABLISHED


@pytest.mark.skipif(__import__("shutil").which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_decrypts_and_reassembles_our_fragments(pki, tmp_path) -> None:
    """Wireshark's IKEv2 dissector as an independent opinion: fragment numbers/totals as we sent
    them, every fragment's ICV correct, and the reassembled IKE_AUTH carries our identities."""
    import os
    import subprocess

    from scapy.layers.inet import IP, UDP
    from scapy.utils import wrpcap

    from ipsecemu.pcap.uat import IkeSaRow, format_ikev2_table

    a, b, net = frag_pair(pki)
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    pkts = [IP(src=p.src[0], dst=p.dst[0]) / UDP(sport=p.src[1], dport=p.dst[1]) / p.data for p in net.log]
    wrpcap(str(tmp_path / "ike.pcap"), pkts)
    k = sa.keys
    (tmp_path / "wireshark").mkdir()
    (tmp_path / "wireshark" / "ikev2_decryption_table").write_text(format_ikev2_table(
        [IkeSaRow(sa.spi_i, sa.spi_r, k.sk_ei, k.sk_er, "aes256", k.sk_ai, k.sk_ar, "sha256")]))
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    fields = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "ike.pcap"), "-T", "fields", "-e",
                             "isakmp.frag.number", "-e", "isakmp.frag.total"], capture_output=True, text=True,
                            env=env, timeout=60, check=True).stdout.split("\n")
    frags = [tuple(map(int, ln.split("\t"))) for ln in fields if ln.strip() and ln.split("\t")[0]]
    want = [struct.unpack_from("!HH", p.data, 32) for p in net.log if _skf(p.data)]
    assert frags == want and len(frags) >= 4
    out = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "ike.pcap"), "-V"], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert out.count("[correct]") >= len(frags)  # every fragment's ICV verified by tshark
    assert "[incorrect" not in out.lower() and "Malformed" not in out
    assert "left.example" in out and "right.example" in out  # found inside the reassembled messages
