"""The transform registry against IANA (vector file), scapy, strongSwan's and tshark's own tables."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
from scapy.contrib import ikev2 as scapy_ikev2

from ipsecemu.base.algorithms import ESP_ENCR, ESP_INTEG
from ipsecemu.ike import transforms as T

from support.paths import load_vectors

# our keyword -> IANA registry name (the vector file holds the IDs)
ENCR_IANA = {
    "aes128": "ENCR_AES_CBC", "aes192": "ENCR_AES_CBC", "aes256": "ENCR_AES_CBC",
    "3des": "ENCR_3DES", "null": "ENCR_NULL", "chacha20poly1305": "ENCR_CHACHA20_POLY1305",
    **{f"aes{b}gcm{i}": f"ENCR_AES_GCM_{i}" for b in (128, 192, 256) for i in (8, 12, 16)},
}
PRF_IANA = {"prfmd5": "PRF_HMAC_MD5", "prfsha1": "PRF_HMAC_SHA1", "prfsha256": "PRF_HMAC_SHA2_256",
            "prfsha384": "PRF_HMAC_SHA2_384", "prfsha512": "PRF_HMAC_SHA2_512"}
INTEG_IANA = {"md5": "AUTH_HMAC_MD5_96", "sha1": "AUTH_HMAC_SHA1_96", "sha256": "AUTH_HMAC_SHA2_256_128",
              "sha384": "AUTH_HMAC_SHA2_384_192", "sha512": "AUTH_HMAC_SHA2_512_256"}
KE_IANA = {"modp768": "768-bit MODP Group", "modp1024": "1024-bit MODP Group",
           "modp1536": "1536-bit MODP Group", "modp2048": "2048-bit MODP Group",
           "modp3072": "3072-bit MODP Group", "modp4096": "4096-bit MODP Group",
           "ecp256": "256-bit random ECP group (P-256)", "ecp384": "384-bit random ECP group (P-384)",
           "ecp521": "521-bit random ECP group (P-521)",
           "modp2048s256": "2048-bit MODP Group with 256-bit Prime Order Subgroup",
           "curve25519": "Curve25519"}


@pytest.fixture(scope="module")
def iana() -> dict:
    return load_vectors("ikev2_iana_registry.json")


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_transform_type_ids(iana: dict) -> None:
    names = {e["id"]: e["name"] for e in iana["transform_types"]}
    assert names[T.TransformType.ENCR].startswith("Encryption")
    assert names[T.TransformType.PRF].startswith("Pseudorandom")
    assert names[T.TransformType.INTEG].startswith("Integrity")
    assert names[T.TransformType.KE].startswith("Diffie-Hellman")
    assert names[T.TransformType.ESN].startswith("Extended Sequence")
    assert iana["transform_attributes"][0]["type"] == T.ATTR_KEY_LENGTH


def test_every_keyword_is_mapped_in_the_test() -> None:
    # a new registry entry must be added to the IANA cross-check tables above
    assert set(T.ENCR) == set(ENCR_IANA)
    assert set(T.PRF) == set(PRF_IANA)
    assert set(T.INTEG) == set(INTEG_IANA)
    assert set(T.KE) == set(KE_IANA)


def test_encr_ids_and_sizes_equal_iana(iana: dict) -> None:
    reg = _by_name(iana["encryption"])
    for kw, e in T.ENCR.items():
        r = reg[ENCR_IANA[kw]]
        assert e.id == r["id"], kw
        for ours, theirs in ((e.iv_len, "iv_len"), (e.icv_len, "icv_len"), (e.salt_len, "salt_len"),
                             (e.block, "block")):
            if theirs in r:
                assert ours == r[theirs], (kw, theirs)
        if "key_len" in r:
            assert e.key_len * 8 in r["key_len"], kw
        # the Key Length attribute is required exactly for AES
        assert (e.key_bits is not None) == (r.get("key_length_attribute") == "required" or "GCM" in r["name"])
        assert e.ike_ok == (not r.get("esp_only", False)), kw


def test_prf_integ_ke_esn_ids_equal_iana(iana: dict) -> None:
    prf, integ, ke = _by_name(iana["prf"]), _by_name(iana["integrity"]), _by_name(iana["key_exchange"])
    for kw, p in T.PRF.items():
        assert p.id == prf[PRF_IANA[kw]]["id"]
        assert p.out_len == prf[PRF_IANA[kw]].get("output_len", p.out_len)
    for kw, i in T.INTEG.items():
        r = integ[INTEG_IANA[kw]]
        assert (i.id, i.icv_len, i.key_len) == (r["id"], r["icv_len"], r["key_len"])
    for kw, g in T.KE.items():
        r = ke[KE_IANA[kw]]
        assert g.id == r["id"], kw
        assert g.ke_len == r.get("ke_data_len", g.ke_len), kw
    assert T.INTEG_NONE.id == integ["NONE"]["id"] == 0
    assert T.KE_NONE.id == ke["NONE"]["id"] == 0
    esn = {e["id"]: e["name"] for e in iana["esn"]}
    assert esn[T.ESN["esn"].id] == "Extended Sequence Numbers"
    assert esn[T.ESN["noesn"].id].startswith("No ")


def test_ids_agree_with_scapy() -> None:
    algs = scapy_ikev2.IKEv2TransformAlgorithms
    assert algs[1][T.ENCR["aes256"].id] == "AES-CBC"
    assert algs[1][T.ENCR["aes128gcm16"].id] == "AES-GCM-16ICV"
    assert algs[1][T.ENCR["aes128gcm8"].id] == "AES-GCM-8ICV"
    assert algs[1][T.ENCR["3des"].id] == "3DES"
    assert algs[1][T.ENCR["chacha20poly1305"].id] == "ChaCha20-Poly1305"
    assert algs[2][T.PRF["prfsha384"].id] == "PRF_HMAC_SHA2_384"
    assert algs[3][T.INTEG["sha256"].id] == "SHA2-256-128"
    assert algs[3][T.INTEG["sha1"].id] == "HMAC-SHA1-96"
    assert algs[4][T.KE["modp2048s256"].id] == "2048MODP256POSgr"
    assert algs[4][T.KE["curve25519"].id] == "curve25519gr"
    assert algs[4][T.KE["ecp384"].id] == "384randECPgr"
    assert algs[5][T.ESN["esn"].id] == "ESN"


def test_dataplane_names_match_api_sizes() -> None:
    for kw, e in T.ENCR.items():
        assert e.esp_name in ESP_ENCR, kw
        keylens, salt, iv, block, icv = ESP_ENCR[e.esp_name]
        assert e.key_len in keylens and (salt, iv, block, icv) == (e.salt_len, e.iv_len, e.block, e.icv_len), kw
        assert e.aead == (icv > 0)
    for kw, i in T.INTEG.items():
        assert ESP_INTEG[i.esp_name] == (i.key_len, i.icv_len, i.hash), kw


def test_lookup_aliases_and_case() -> None:
    assert T.lookup("AES256GCM16") == (T.TransformType.ENCR, T.ENCR["aes256gcm16"])
    assert T.lookup("aes128gcm128")[1] is T.ENCR["aes128gcm16"]
    assert T.lookup("aes256gcm")[1] is T.ENCR["aes256gcm16"]
    assert T.lookup("aes")[1] is T.ENCR["aes128"]
    assert T.lookup("x25519")[1] is T.KE["curve25519"]
    assert T.lookup("sha2_256")[1] is T.INTEG["sha256"]
    assert T.lookup("des") is None and T.lookup("") is None


def test_by_id_roundtrip() -> None:
    for e in T.ENCR.values():
        assert T.encr_by_id(e.id, e.key_bits) is e
    assert T.encr_by_id(12, None) is None  # AES-CBC without Key Length attribute is malformed
    assert T.encr_by_id(12, 512) is None
    assert T.encr_by_id(2) is None  # single DES: not implemented
    for p in T.PRF.values():
        assert T.prf_by_id(p.id) is p
    for i in T.INTEG.values():
        assert T.integ_by_id(i.id) is i
    for g in T.KE.values():
        assert T.ke_by_id(g.id) is g
    assert T.ke_by_id(0) is T.KE_NONE and T.integ_by_id(0) is T.INTEG_NONE
    assert T.esn_by_id(1).enabled and not T.esn_by_id(0).enabled
    assert T.keyword_for(1, 12, 256) == "aes256"
    assert T.keyword_for(4, 99) == "ke99"
    assert T.keyword_for(9, 1) == "t91"


@cache
def _binary_strings(path: str) -> frozenset[str]:
    data = Path(path).read_bytes()
    return frozenset(m.decode() for m in re.findall(rb"[\x20-\x7e]{3,}", data))


STRONGSWAN_LIB = "/usr/lib/ipsec/libstrongswan.so.0"
WIRESHARK_LIBS = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libwireshark.so.*"))


@pytest.mark.skipif(not Path(STRONGSWAN_LIB).exists(), reason="strongSwan not installed")
def test_keywords_exist_in_strongswan() -> None:
    """Every keyword we accept is one of strongSwan's own proposal keywords."""
    known = _binary_strings(STRONGSWAN_LIB)
    ours = [*T.ENCR, *T.PRF, *T.INTEG, *T.KE, *T.ESN, *T.KE_ALIASES, *T.INTEG_ALIASES, *T.ENCR_ALIASES]
    # the linker merges a short string into the tail of a longer one ("sha256" in "prfsha256")
    missing = [k for k in ours if k not in known and not any(s.endswith(k) for s in known)]
    assert not missing
    assert "aes256gcm16" in known and "modp2048s256" in known


@pytest.mark.skipif(not WIRESHARK_LIBS, reason="tshark not installed")
def test_wireshark_uat_strings_exist_in_tshark() -> None:
    known = _binary_strings(str(WIRESHARK_LIBS[-1]))
    strings = {e.wireshark_esp for e in T.ENCR.values()} | {e.wireshark_ike for e in T.ENCR.values()}
    strings |= {i.wireshark_esp for i in T.INTEG.values()} | {i.wireshark_ike for i in T.INTEG.values()}
    strings -= {None, "NULL"}  # "NULL" is too short to be a separate string in the binary
    assert strings and not [s for s in strings if s not in known]
    assert T.ENCR["aes128gcm16"].wireshark_esp == "AES-GCM with 16 octet ICV [RFC4106]"
    assert T.ENCR["aes256"].wireshark_ike == "AES-CBC-256 [RFC3602]"
    assert T.INTEG["sha256"].wireshark_ike == "HMAC_SHA2_256_128 [RFC4868]"
