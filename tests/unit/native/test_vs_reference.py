"""Reference (pure Python) <-> C path: byte-identical output, each opens the other's packets,
and identical verdicts/counters/events for random and mutated input (hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.base import algorithms
from ipsecemu.base.satypes import EspSaConfig, Lifetime, MacsecSaConfig, SecYConfig, Verdict

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
native_esp = pytest.importorskip("ipsecemu.dataplane.native.esp")
ref = pytest.importorskip("ipsecemu.dataplane.reference")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

C_SUITES = [(e, None) for e in ("aes-gcm-8", "aes-gcm-12", "aes-gcm-16")] + [
    ("aes-cbc", i) for i in ("hmac-sha1-96", "hmac-sha256-128", "hmac-sha384-192", "hmac-sha512-256")] + [
    ("3des-cbc", i) for i in ("hmac-sha1-96", "hmac-sha256-128")]


@st.composite
def esp_configs(draw: st.DrawFn, suites: list = C_SUITES) -> EspSaConfig:
    encr, integ = draw(st.sampled_from(suites))
    keylens, salt, _iv, _blk, _icv = algorithms.ESP_ENCR[encr]
    enc_key = draw(st.binary(min_size=1, max_size=1).flatmap(
        lambda _: st.sampled_from(keylens)).flatmap(lambda n: st.binary(min_size=n + salt, max_size=n + salt)))
    integ_key = b""
    if integ:
        n = algorithms.ESP_INTEG[integ][0]
        integ_key = draw(st.binary(min_size=n, max_size=n))
    return EspSaConfig(spi=draw(st.integers(256, 2**32 - 1)), encr=encr, enc_key=enc_key, integ=integ,
                       integ_key=integ_key, esn=draw(st.booleans()),
                       replay_window=draw(st.sampled_from([0, 32, 64, 128, 4096])))


def iv_len(cfg: EspSaConfig) -> int:
    return algorithms.ESP_ENCR[cfg.encr][2]


@SETTINGS
@given(cfg=esp_configs(), data=st.data())
def test_esp_byte_identical_and_cross_decap(cfg: EspSaConfig, data: st.DataObject) -> None:
    payloads = data.draw(st.lists(st.binary(max_size=1500), min_size=1, max_size=40))
    nh = data.draw(st.integers(0, 255).filter(lambda x: x != 59))
    n = len(payloads)
    ivs = [data.draw(st.binary(min_size=iv_len(cfg), max_size=iv_len(cfg))) for _ in range(n)]
    if cfg.encr not in ("aes-cbc", "3des-cbc") and data.draw(st.booleans()):
        ivs = None  # default AEAD IV = sequence number: deterministic on both sides too
    limit = (1 << 64) - 1 if cfg.esn else (1 << 32) - 1
    start = data.draw(st.one_of(st.just(1), st.integers(1, limit - n - 1)))
    c_out, r_out = native.EspOutbound(cfg, initial_seq=start), ref.EspOutbound(cfg, initial_seq=start)
    c_pk = c_out.encap_batch(payloads, nh, ivs=ivs)
    r_pk = r_out.encap_batch(payloads, nh, ivs=ivs)
    assert c_pk == r_pk
    assert all(v is Verdict.OK for v, _ in c_pk)
    assert c_out.next_seq == r_out.next_seq == start + n
    assert c_out.counters == r_out.counters

    # each side opens the other's packets
    c_in = native.EspInbound(cfg, replay_top=start - 1)
    r_in = ref.EspInbound(cfg, replay_top=start - 1)
    c_res = c_in.decap_batch([p for _, p in r_pk])
    r_res = r_in.decap_batch([p for _, p in c_pk])
    assert c_res == r_res
    assert [(r.verdict, r.payload, r.next_header) for r in c_res] == [(Verdict.OK, p, nh) for p in payloads]
    assert [r.seq for r in c_res] == list(range(start, start + n))
    assert c_in.counters == r_in.counters


def _mutate(data: st.DataObject, pkt: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "same", "spi", "seq"]))
    b = bytearray(pkt)
    if kind == "flip" and b:
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del b[data.draw(st.integers(0, len(b))):]
    elif kind == "extend":
        b += data.draw(st.binary(min_size=1, max_size=20))
    elif kind == "spi" and len(b) >= 4:
        b[0:4] = data.draw(st.binary(min_size=4, max_size=4))
    elif kind == "seq" and len(b) >= 8:
        b[4:8] = data.draw(st.binary(min_size=4, max_size=4))
    return bytes(b)


@SETTINGS
@given(cfg=esp_configs(), data=st.data())
def test_esp_mutated_input_same_verdicts_and_counters(cfg: EspSaConfig, data: st.DataObject) -> None:
    payloads = data.draw(st.lists(st.binary(max_size=300), min_size=1, max_size=12))
    nh = data.draw(st.sampled_from([4, 41, 59]))
    pk = [p for _, p in ref.EspOutbound(cfg).encap_batch(payloads, nh, ivs=[bytes(iv_len(cfg))] * len(payloads))]
    stream = [_mutate(data, p) for p in pk] + data.draw(st.lists(st.sampled_from(pk), max_size=4))
    c_in, r_in = native.EspInbound(cfg), ref.EspInbound(cfg)
    assert c_in.decap_batch(stream) == r_in.decap_batch(stream)
    assert c_in.counters == r_in.counters
    # the same through the tables (too-short/unknown counted table-wide)
    c_t, r_t = native.EspInboundTable(), ref.EspInboundTable()
    c_t.add(cfg)
    r_t.add(cfg)
    assert [c_t.decap(p) for p in stream] == r_t.decap_batch(stream)
    assert c_t.counters == r_t.counters
    assert c_t.counters_for(cfg.spi) == r_t.counters_for(cfg.spi)


@pytest.mark.parametrize("suite", [("3des-cbc", "hmac-md5-96"), ("chacha20-poly1305", None),
                                   ("null", "hmac-sha256-128"), ("aes-cbc", "hmac-md5-96")])
def test_esp_fallback_algorithms_same_api(suite: tuple[str, str | None]) -> None:
    encr, integ = suite
    keylen = algorithms.ESP_ENCR[encr][0][0] + algorithms.ESP_ENCR[encr][1]
    cfg = EspSaConfig(spi=0x501, encr=encr, enc_key=bytes(range(keylen)), integ=integ,
                      integ_key=bytes(algorithms.ESP_INTEG[integ][0]) if integ else b"")
    assert not native_esp.native_esp_supported(cfg)
    ivs = [bytes(iv_len(cfg))] * 3
    c_pk = native.EspOutbound(cfg).encap_batch([b"a", b"bb" * 50, b""], 4, ivs=ivs)
    assert c_pk == ref.EspOutbound(cfg).encap_batch([b"a", b"bb" * 50, b""], 4, ivs=ivs)
    table = native.EspInboundTable()
    table.add(cfg)
    gcm = EspSaConfig(spi=0x502, encr="aes-gcm-16", enc_key=bytes(20))
    table.add(gcm)
    gcm_pk = native.EspOutbound(gcm).encap(b"native", 4)[1]
    res = table.decap_batch([c_pk[0][1], gcm_pk, c_pk[1][1], b"\x00\x00\x09\x99" + bytes(40)])
    assert [r.verdict for r in res] == [Verdict.OK, Verdict.OK, Verdict.OK, Verdict.UNKNOWN_SA]
    assert [r.payload for r in res[:3]] == [b"a", b"native", b"bb" * 50]
    assert table.counters_for(0x501).packets == 2 and table.counters_for(0x502).packets == 1
    assert table.counters.unknown_sa == 1


def test_esp_lifetime_and_seq_events_match_reference() -> None:
    lt = Lifetime(soft_packets=3, hard_packets=5, soft_bytes=250, hard_bytes=10_000)
    for esn in (False, True):
        cfg = EspSaConfig(spi=0x777, encr="aes-gcm-16", enc_key=bytes(20), esn=esn, lifetime=lt,
                          seq_soft_margin=2)
        start = ((1 << 64) if esn else (1 << 32)) - 4
        sides = []
        for mod in (native, ref):
            out = mod.EspOutbound(cfg, initial_seq=start)
            got = [(out.encap(b"x" * 100, 4)[0], out.poll_events(), out.next_seq) for _ in range(6)]
            sides.append((got, out.counters))
        assert sides[0] == sides[1]
        verdicts = [v for v, _, _ in sides[0][0]]
        assert verdicts == [Verdict.OK] * 4 + [Verdict.EXHAUSTED] * 2
        events = [e for _, evs, _ in sides[0][0] for e in evs]
        assert {(e.kind, e.reason) for e in events} == {("soft", "packets"), ("soft", "bytes"),
                                                        ("soft", "seq"), ("hard", "seq")}
        # inbound lifetimes: hard packets refuses the 6th packet
        unlimited = dataclasses.replace(cfg, lifetime=Lifetime())
        pk = [p for _, p in ref.EspOutbound(unlimited).encap_batch([b"y" * 10] * 7, 4)]
        c_in, r_in = native.EspInbound(cfg), ref.EspInbound(cfg)
        assert c_in.decap_batch(pk) == r_in.decap_batch(pk)
        assert c_in.counters == r_in.counters and c_in.counters.exhausted == 2
        assert c_in.poll_events() == r_in.poll_events()


# ---------------------------------------------------------------------------- MACsec

CIPHERS = list(algorithms.MACSEC_CIPHERS)


@st.composite
def macsec_setups(draw: st.DrawFn) -> tuple[SecYConfig, MacsecSaConfig]:
    cipher = draw(st.sampled_from(CIPHERS))
    keylen, xpn = algorithms.MACSEC_CIPHERS[cipher]
    include_sci = draw(st.booleans())
    secy = SecYConfig(include_sci=include_sci, end_station=draw(st.booleans()),
                      confidentiality=draw(st.booleans()),
                      replay_window=draw(st.sampled_from([0, 0, 4, 1000])),
                      replay_protect=draw(st.booleans()),
                      validate=draw(st.sampled_from(["strict", "check", "disabled"])))
    mac = draw(st.binary(min_size=6, max_size=6))
    sci = draw(st.binary(min_size=8, max_size=8)) if include_sci else mac + b"\x00\x01"
    limit = (1 << 64) if xpn else (1 << 32)
    next_pn = draw(st.one_of(st.integers(1, 5), st.integers(1, limit - 50), st.integers(limit - 50, limit - 41)))
    sa = MacsecSaConfig(cipher=cipher, sak=draw(st.binary(min_size=keylen, max_size=keylen)), sci=sci,
                        an=draw(st.integers(0, 3)), ssci=draw(st.integers(0, 2**32 - 1)) if xpn else None,
                        salt=draw(st.binary(min_size=12, max_size=12)) if xpn else None, next_pn=next_pn)
    return secy, sa


def _frames(data: st.DataObject, sa: MacsecSaConfig, max_len: int = 1500) -> list[bytes]:
    body = st.binary(min_size=2, max_size=max_len - 12)
    return [data.draw(st.binary(min_size=6, max_size=6)) + sa.sci[:6] + data.draw(body)
            for _ in range(data.draw(st.integers(1, 40)))]


@SETTINGS
@given(setup=macsec_setups(), data=st.data())
def test_macsec_byte_identical_and_cross_validate(setup: tuple, data: st.DataObject) -> None:
    secy, sa = setup
    frames = _frames(data, sa)
    c_tx, r_tx = native.MacsecTx(secy, sa), ref.MacsecTx(secy, sa)
    c_pf, r_pf = c_tx.protect_batch(frames), r_tx.protect_batch(frames)
    assert c_pf == r_pf
    assert c_tx.next_pn == r_tx.next_pn and c_tx.counters == r_tx.counters
    assert c_tx.poll_events() == r_tx.poll_events()
    c_rx, r_rx = native.MacsecRx(secy), ref.MacsecRx(secy)
    c_rx.add_sa(sa)
    r_rx.add_sa(sa)
    c_res = c_rx.validate_batch([f for _, f in r_pf])
    r_res = r_rx.validate_batch([f for _, f in c_pf])
    assert c_res == r_res
    ok = [f for (v, _), f in zip(c_pf, frames, strict=True) if v is Verdict.OK]
    assert [r.frame for r in c_res if r.verdict is Verdict.OK] == ok
    assert c_rx.counters_for(sa.sci, sa.an) == r_rx.counters_for(sa.sci, sa.an)
    assert c_rx.next_pn_for(sa.sci, sa.an) == r_rx.next_pn_for(sa.sci, sa.an)


def _mutate_frame(data: st.DataObject, f: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "flip_tag", "truncate", "same", "tci", "sl", "untagged"]))
    b = bytearray(f)
    if kind == "flip":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "flip_tag":
        b[data.draw(st.integers(12, min(len(b), 28) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del b[data.draw(st.integers(0, len(b))):]
    elif kind == "tci":
        b[14] = data.draw(st.integers(0, 255))
    elif kind == "sl":
        b[15] = data.draw(st.integers(0, 255))
    elif kind == "untagged":
        b[12:14] = b"\x08\x00"
    return bytes(b)


@SETTINGS
@given(setup=macsec_setups(), data=st.data())
def test_macsec_mutated_input_same_results(setup: tuple, data: st.DataObject) -> None:
    secy, sa = setup
    frames = _frames(data, sa, max_len=200)
    protected = [f for v, f in ref.MacsecTx(secy, sa).protect_batch(frames) if v is Verdict.OK]
    if not protected:
        return
    stream = [_mutate_frame(data, f) for f in protected]
    stream += data.draw(st.lists(st.sampled_from(protected), max_size=4))
    c_rx, r_rx = native.MacsecRx(secy), ref.MacsecRx(secy)
    c_rx.add_sa(sa)
    r_rx.add_sa(sa)
    assert c_rx.validate_batch(stream) == [r_rx.validate(f) for f in stream]
    assert c_rx.counters == r_rx.counters
    assert c_rx.counters_for(sa.sci, sa.an) == r_rx.counters_for(sa.sci, sa.an)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_macsec_pn_exhaustion_and_events_match_reference(cipher: str) -> None:
    keylen, xpn = algorithms.MACSEC_CIPHERS[cipher]
    limit = (1 << 64) if xpn else (1 << 32)
    extra = {"ssci": 7, "salt": bytes(range(12))} if xpn else {}
    sa = MacsecSaConfig(cipher=cipher, sak=bytes(keylen), sci=bytes(range(8)), an=1, next_pn=limit - 3, **extra)
    for threshold in (0xC0000000, 0xFFFFFFFF, 1 << 32, 0):
        secy = SecYConfig(pn_exhaustion_threshold=threshold)
        sides = []
        for mod in (native, ref):
            tx = mod.MacsecTx(secy, sa)
            sides.append([(tx.protect(bytes(60))[0], tx.poll_events(), tx.next_pn) for _ in range(5)]
                         + [tx.counters])
        assert sides[0] == sides[1], threshold
        assert [s[0] for s in sides[0][:5]] == [Verdict.OK] * 3 + [Verdict.EXHAUSTED] * 2
        assert sides[0][2][2] == limit
