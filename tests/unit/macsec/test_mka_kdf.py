"""MKA key hierarchy against published (RFC 4493, RFC 3394) and DERIVED 802.1X vectors."""

from __future__ import annotations

import pytest

from ipsecemu.macsec.mka import kdf

from support.paths import load_vectors

CMAC = load_vectors("aes_cmac_rfc4493_4494_4615.json")["vectors"]
KW = load_vectors("aes_keywrap_rfc3394.json")["vectors"]
MKA = {v["id"]: v for v in load_vectors("mka_kdf_derived_examples.json")["vectors"]}
H = bytes.fromhex


@pytest.mark.parametrize(
    "v", [v for v in CMAC if v["algorithm"] == "AES-CMAC (RFC 4493)"], ids=lambda v: v["id"]
)
def test_aes_cmac_rfc4493(v: dict) -> None:
    assert kdf.aes_cmac(H(v["key"]), H(v["message"])) == H(v["mac"])
    assert kdf.cmac_verify(H(v["key"]), H(v["message"]), H(v["mac"]))
    bad = bytearray(H(v["mac"]))
    bad[0] ^= 1
    assert not kdf.cmac_verify(H(v["key"]), H(v["message"]), bytes(bad))


def test_rfc4493_vectors_present() -> None:
    assert sum(v["algorithm"] == "AES-CMAC (RFC 4493)" for v in CMAC) == 4


@pytest.mark.parametrize("v", KW, ids=lambda v: v["id"])
def test_key_wrap_rfc3394(v: dict) -> None:
    assert kdf.wrap_sak(H(v["kek"]), H(v["key_data"])) == H(v["ciphertext"])
    assert kdf.unwrap_sak(H(v["kek"]), H(v["ciphertext"])) == H(v["key_data"])


def test_unwrap_with_wrong_kek_is_a_clear_error() -> None:
    v = KW[0]
    with pytest.raises(kdf.MkaKeyError, match="unwrap failed"):
        kdf.unwrap_sak(bytes(16), H(v["ciphertext"]))
    with pytest.raises(kdf.MkaKeyError, match="bad length"):
        kdf.unwrap_sak(H(v["kek"]), H(v["ciphertext"])[:-1])


@pytest.mark.parametrize("vid", ["ICK-128", "ICK-256", "ICK-128-shortCKN"])
def test_ick(vid: str) -> None:
    v = MKA[vid]
    assert kdf.derive_ick(H(v["cak"]), H(v["ckn"])) == H(v["output"])


@pytest.mark.parametrize("vid", ["KEK-128", "KEK-256"])
def test_kek(vid: str) -> None:
    v = MKA[vid]
    assert kdf.derive_kek(H(v["cak"]), H(v["ckn"])) == H(v["output"])


def test_kdf_first_prf_input_matches_layout() -> None:
    # The KDF's first block is CMAC(key, i | label | 0 | context | L): check against the input given.
    v = MKA["ICK-256"]
    first = kdf.aes_cmac(H(v["cak"]), H(v["first_prf_input"]))
    assert kdf.kdf(H(v["cak"]), H(v["label"]), H(v["context"]), 256)[:16] == first


def test_eap_cak_ckn() -> None:
    v = MKA["EAP-CAK-128"]
    assert kdf.eap_cak(H(v["msk"]), H(v["mac_a"]), H(v["mac_b"])) == H(v["output"])
    w = MKA["EAP-CKN-128"]
    assert kdf.eap_ckn(H(w["msk"]), H(w["eap_session_id"]), H(w["mac_a"]), H(w["mac_b"])) == H(w["output"])


def test_sak_from_ks_nonce() -> None:
    v = MKA["SAK-128"]
    sak = kdf.derive_sak(H(v["cak"]), H(v["ks_nonce"]), [H(m) for m in v["mi_list"]], int(v["kn"], 16), 16)
    assert sak == H(v["output"])


def test_sak_wrap() -> None:
    v = MKA["SAK-wrap-128"]
    assert kdf.wrap_sak(H(v["kek"]), H(v["sak"])) == H(v["wrapped"])
    assert kdf.unwrap_sak(H(v["kek"]), H(v["wrapped"])) == H(v["sak"])


def test_icv() -> None:
    v = MKA["ICV-cmac-128"]
    assert kdf.aes_cmac(H(v["ick"]), H(v["message"])) == H(v["icv"])


def test_256_bit_sak_wraps_to_40_bytes() -> None:
    kek = kdf.derive_kek(bytes(range(32)), b"ckn")
    sak = kdf.derive_sak(bytes(range(32)), bytes(32), [bytes(12)], 1, 32)
    wrapped = kdf.wrap_sak(kek, sak)
    assert len(sak) == 32 and len(wrapped) == 40
    assert kdf.unwrap_sak(kek, wrapped) == sak


def test_xpn_salt_layout() -> None:
    # 802.1AE-2018 10.7.28: salt[4:12] = MI[4:12]; salt[2:4] = MI[2:4] ^ KN[0:2]; salt[0:2] = MI[0:2] ^ KN[2:4]
    mi = bytes(range(1, 13))
    salt = kdf.xpn_salt(mi, 0xA1B2C3D4)
    assert salt[4:] == mi[4:]
    assert salt[2:4] == bytes([0x03 ^ 0xA1, 0x04 ^ 0xB2])
    assert salt[0:2] == bytes([0x01 ^ 0xC3, 0x02 ^ 0xD4])
    assert kdf.xpn_salt(mi, 0) == mi


@pytest.mark.parametrize(
    ("cak", "ckn", "match"),
    [
        (bytes(15), b"x", "cak"),
        (bytes(24), b"x", "cak"),
        (bytes(16), b"", "ckn"),
        (bytes(16), bytes(33), "ckn"),
    ],
)
def test_bad_cak_ckn_sizes(cak: bytes, ckn: bytes, match: str) -> None:
    with pytest.raises(kdf.MkaKeyError, match=match):
        kdf.derive_ick(cak, ckn)


def test_bad_sak_inputs() -> None:
    with pytest.raises(kdf.MkaKeyError, match="ks_nonce"):
        kdf.derive_sak(bytes(16), bytes(8), [bytes(12)], 1, 16)
    with pytest.raises(kdf.MkaKeyError, match="mi_list"):
        kdf.derive_sak(bytes(16), bytes(16), [bytes(11)], 1, 16)
