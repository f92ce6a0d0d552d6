"""Published vectors on the C path: ESP AES-GCM (draft-mcgrew-gcm-test-01, incl. ESN),
ESP AES-CBC (RFC 3602 cases 5-8) and all MACsec frames of IEEE 802.1AE Annex C (+ DPDK)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig, Verdict

from support.paths import load_vectors

native = pytest.importorskip("ipsecemu.dataplane.native", reason="C module not built (make build)")
cmodule = pytest.importorskip("ipsecemu.dataplane.native.cmodule")
ffi, lib = cmodule.ffi, cmodule.lib

GCM = [v for v in load_vectors("esp_aes_gcm_draft_mcgrew_gcm_test_01.json")["vectors"]
       if v["transform"].startswith("ENCR_AES_GCM_16")]
CBC = [v for v in load_vectors("esp_aes_cbc_rfc3602.json")["vectors"] if "esp_packet" in v]
MACSEC = (load_vectors("macsec_gcm_aes_annex_c.json")["vectors"]
          + load_vectors("macsec_dpdk_extra.json")["vectors"])
H = bytes.fromhex


def full_seq(v: dict) -> int:
    return (int(v["seq_hi"], 16) << 32 | int(v["seq"], 16)) if v["esn"] else int(v["seq"], 16)


def test_vector_counts() -> None:
    assert len(GCM) == 16 and len(CBC) == 4 and len(MACSEC) == 33


def _raw_gcm(v: dict, decap: bool) -> tuple[int, bytes, int]:
    """Drive the C API directly (SPI 0 in one vector is refused by EspSaConfig by design)."""
    key = H(v["keymat"])
    c = ffi.new("ie_esp_cfg *")
    keybuf = ffi.new("uint8_t[]", key)
    c.spi, c.encr, c.integ = int(v["spi"], 16), lib.IE_ENCR_AES_GCM_16, lib.IE_INTEG_NONE
    c.enc_key, c.enc_key_len, c.esn, c.replay_window = keybuf, len(key), int(v["esn"]), 64
    if decap:
        c.initial_seq = full_seq(v) - 1
        t = ffi.gc(lib.ie_esp_table_new(), lib.ie_esp_table_free)
        assert lib.ie_esp_table_add(t, c) == lib.IE_S_OK
        data = bytearray(H(v["esp_packet"]))
        buf = ffi.from_buffer("uint8_t[]", data)
        pkt = ffi.new("ie_pkt *", {"buf": buf, "off": 0, "len": len(data), "cap": len(data)})
        verdict = ffi.new("uint8_t[1]")
        lib.ie_esp_decap(t, pkt, 1, verdict)
        return verdict[0], bytes(data[pkt.off:pkt.off + pkt.len]), pkt.next_header
    c.initial_seq = full_seq(v)
    out = ffi.new("ie_esp_out **")
    assert lib.ie_esp_out_new(c, out) == lib.IE_S_OK
    sa = ffi.gc(out[0], lib.ie_esp_out_free)
    payload = H(v["esp_trailer"]["payload"])
    data = bytearray(24) + payload + bytearray(64)
    buf = ffi.from_buffer("uint8_t[]", data)
    iv = ffi.new("uint8_t[]", H(v["iv"]))
    pkt = ffi.new("ie_pkt *", {"buf": buf, "off": 24, "len": len(payload), "cap": len(data),
                               "next_header": v["esp_trailer"]["next_header"], "iv": iv})
    verdict = ffi.new("uint8_t[1]")
    lib.ie_esp_encap(sa, pkt, 1, verdict)
    return verdict[0], bytes(data[pkt.off:pkt.off + pkt.len]), pkt.next_header


@pytest.mark.parametrize("v", GCM, ids=lambda v: v["id"])
def test_esp_gcm_vector_raw_c(v: dict) -> None:
    verdict, packet, _ = _raw_gcm(v, decap=False)
    assert verdict == lib.IE_OK and packet == H(v["esp_packet"])
    verdict, payload, nh = _raw_gcm(v, decap=True)
    assert verdict == lib.IE_OK
    assert payload == H(v["esp_trailer"]["payload"]) and nh == v["esp_trailer"]["next_header"]


@pytest.mark.parametrize("v", [v for v in GCM if int(v["spi"], 16) >= 256], ids=lambda v: v["id"])
def test_esp_gcm_vector_wrapper(v: dict) -> None:
    cfg = EspSaConfig(spi=int(v["spi"], 16), encr="aes-gcm-16", enc_key=H(v["keymat"]), esn=v["esn"])
    out = native.EspOutbound(cfg, initial_seq=full_seq(v))
    payload, nh = H(v["esp_trailer"]["payload"]), v["esp_trailer"]["next_header"]
    assert out.encap(payload, nh, iv=H(v["iv"])) == (Verdict.OK, H(v["esp_packet"]))
    assert out.next_seq == full_seq(v) + 1
    inb = native.EspInbound(cfg, replay_top=full_seq(v) - 1)
    res = inb.decap(H(v["esp_packet"]))
    assert (res.verdict, res.payload, res.next_header, res.seq, res.spi) == (
        Verdict.OK, payload, nh, full_seq(v), cfg.spi)
    assert inb.decap(H(v["esp_packet"])).verdict is Verdict.REPLAY
    c = inb.counters
    assert (c.packets, c.bytes, c.replay) == (1, len(payload), 1)


@pytest.mark.parametrize("integ,hname,klen,icvlen", [
    ("hmac-sha1-96", "sha1", 20, 12), ("hmac-sha256-128", "sha256", 32, 16),
    ("hmac-sha384-192", "sha384", 48, 24), ("hmac-sha512-256", "sha512", 64, 32)])
@pytest.mark.parametrize("v", CBC, ids=lambda v: v["id"])
def test_esp_cbc_vector(v: dict, integ: str, hname: str, klen: int, icvlen: int) -> None:
    """RFC 3602 packets carry no ICV: the C output minus its ICV must be the RFC packet, and
    the ICV must be the HMAC that Python's hmac module computes over it."""
    ikey = bytes(range(1, klen + 1))
    cfg = EspSaConfig(spi=int(v["spi"], 16), encr="aes-cbc", enc_key=H(v["key"]), integ=integ,
                      integ_key=ikey)
    seq = int(v["seq"], 16)
    payload, nh = H(v["esp_trailer"]["payload"]), v["esp_trailer"]["next_header"]
    verdict, packet = native.EspOutbound(cfg, initial_seq=seq).encap(payload, nh, iv=H(v["iv"]))
    want = H(v["esp_packet"])
    assert verdict is Verdict.OK
    assert packet[:-icvlen] == want
    assert packet[-icvlen:] == hmac.new(ikey, want, getattr(hashlib, hname)).digest()[:icvlen]
    res = native.EspInbound(cfg).decap(packet)
    assert (res.verdict, res.payload, res.next_header, res.seq) == (Verdict.OK, payload, nh, seq)


def _macsec(v: dict) -> tuple[SecYConfig, MacsecSaConfig]:
    flags = v.get("tci_flags") or {"ES": 0}
    secy = SecYConfig(include_sci=v["sci_in_sectag"], end_station=bool(flags["ES"]),
                      confidentiality=v["protection"] == "confidentiality")
    xpn = v["xpn"]
    bits = "256" if "256" in v["cipher_suite"] else "128"
    if xpn:
        sa = MacsecSaConfig(cipher=f"gcm-aes-xpn-{bits}", sak=H(v["key"]), sci=H(v["sci"]), an=v["an"],
                            ssci=int(xpn["ssci"], 16), salt=H(xpn["salt"]), next_pn=int(xpn["pn64"], 16))
    else:
        sa = MacsecSaConfig(cipher=f"gcm-aes-{bits}", sak=H(v["key"]), sci=H(v["sci"]), an=v["an"],
                            next_pn=int(v["pn"], 16))
    return secy, sa


@pytest.mark.parametrize("v", MACSEC, ids=lambda v: v["id"])
def test_macsec_vector(v: dict) -> None:
    secy, sa = _macsec(v)
    tx = native.MacsecTx(secy, sa)
    frame, protected = H(v["unprotected"]["frame"]), H(v["protected"]["frame"])
    assert tx.protect(frame) == (Verdict.OK, protected)
    assert tx.next_pn == sa.next_pn + 1
    rx = native.MacsecRx(secy)
    rx.add_sa(sa)
    res = rx.validate(protected)
    assert (res.verdict, res.frame, res.sci, res.an, res.pn) == (Verdict.OK, frame, sa.sci, sa.an, sa.next_pn)
    assert rx.counters_for(sa.sci, sa.an).bytes == len(frame) - 12
    # the same frame again: a replay (strict ordering); with XPN its wire PN is read as the
    # next 2^32 block (802.1AEbw recovery), so it fails authentication instead
    assert rx.validate(protected).verdict is (Verdict.BAD_ICV if sa.xpn else Verdict.REPLAY)
    assert rx.counters_for(sa.sci, sa.an).packets == 1
