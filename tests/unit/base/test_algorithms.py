"""The algorithm registry against its sources: IANA "IKEv2 Parameters", the C enums in
native/include/ipsecemu.h, strongSwan's own names, 802.1AE; and against itself (no fact twice)."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from ipsecemu.base import algorithms as A

HEADER = Path(__file__).resolve().parents[3] / "native" / "include" / "ipsecemu.h"
STRONGSWAN_LIB = Path("/usr/lib/ipsec/libstrongswan.so.0")

# IANA "IKEv2 Parameters", Transform Type 1/2/3/4 values, typed in from the registry
# (https://www.iana.org/assignments/ikev2-parameters), independent of the code under test.
IANA_ENCR = {"3des": 3, "null": 11, "aes": 12, "aesgcm8": 18, "aesgcm12": 19, "aesgcm16": 20,
             "chacha20poly1305": 28}
IANA_PRF = {"prfmd5": 1, "prfsha1": 2, "prfsha256": 5, "prfsha384": 6, "prfsha512": 7}
IANA_INTEG = {"md5": 1, "sha1": 2, "sha256": 12, "sha384": 13, "sha512": 14}
IANA_KE = {"modp768": 1, "modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15, "modp4096": 16,
           "ecp256": 19, "ecp384": 20, "ecp521": 21, "modp2048s256": 24, "curve25519": 31}


def _family(keyword: str) -> str:
    """aes256gcm16 -> aesgcm16, aes128 -> aes: the IANA entry a keyword belongs to."""
    return re.sub(r"^(aes)(128|192|256)", r"\1", keyword)


def test_transform_type_numbers() -> None:
    assert [(t.name, int(t)) for t in A.TransformType] == [("ENCR", 1), ("PRF", 2), ("INTEG", 3), ("KE", 4),
                                                           ("ESN", 5)]
    assert A.ATTR_KEY_LENGTH == 14


def test_iana_ids() -> None:
    assert {_family(e.keyword): e.id for e in A.ENCR_LIST} == IANA_ENCR
    assert {p.keyword: p.id for p in A.PRF_LIST} == IANA_PRF
    assert {i.keyword: i.id for i in A.INTEG_LIST} == IANA_INTEG
    assert {g.keyword: g.id for g in A.KE_LIST} == IANA_KE
    assert (A.INTEG_NONE.id, A.KE_NONE.id) == (0, 0)
    assert {e.keyword: e.id for e in A.ESN.values()} == {"noesn": 0, "esn": 1}


def test_key_sizes_follow_the_keyword() -> None:
    for e in A.ENCR_LIST:
        m = re.match(r"aes(128|192|256)", e.keyword)
        if m:
            assert e.key_bits == int(m.group(1)) and e.key_len * 8 == e.key_bits
        else:
            assert e.key_bits is None  # fixed-size ciphers send no Key Length attribute


def test_no_duplicates() -> None:
    for name, items in [("ENCR", A.ENCR_LIST), ("PRF", A.PRF_LIST), ("INTEG", A.INTEG_LIST), ("KE", A.KE_LIST)]:
        kw = Counter(x.keyword for x in items)
        assert not [k for k, n in kw.items() if n > 1], name
    assert len({(e.id, e.key_bits) for e in A.ENCR_LIST}) == len(A.ENCR_LIST)
    for items in (A.PRF_LIST, A.INTEG_LIST, A.KE_LIST):
        assert len({x.id for x in items}) == len(items)
    # one swan name per (ENCR, key size) and per INTEG/PRF/KE entry
    for items in (A.PRF_LIST, A.INTEG_LIST, A.KE_LIST):
        assert len({x.swan_name for x in items}) == len(items)
    # the derived views cover every entry exactly once
    assert set(A.ESP_CIPHERS) == {e.esp_name for e in A.ENCR_LIST if e.esp_name}
    assert len(A.ESP_CIPHER_BY_ID) == len(A.ESP_CIPHERS)
    # keywords do not collide across transform types (lookup() tries the types in order)
    every = [*A.ENCR, *A.PRF, *A.INTEG, *A.KE, *A.ESN, *A.ENCR_ALIASES, *A.INTEG_ALIASES, *A.KE_ALIASES]
    assert len(every) == len(set(every))


def test_esp_views_match_entries() -> None:
    for e in A.ENCR_LIST:
        if e.esp_name is None:
            continue
        keys, salt, iv, block, icv = A.ESP_ENCR[e.esp_name]
        assert e.key_len in keys and (salt, iv, block, icv) == (e.salt_len, e.iv_len, e.block, e.icv_len)
        assert (e.esp_name in A.AEAD_ESP_ENCR) == e.aead == (icv > 0)
    assert A.ESP_ENCR["aes-gcm-16"] == ((16, 24, 32), 4, 8, 4, 16)
    assert A.ESP_ENCR["aes-cbc"] == ((16, 24, 32), 0, 16, 16, 0)
    assert A.ESP_INTEG["hmac-sha256-128"] == (32, 16, "sha256")
    assert list(A.ESP_ENCR)[:4] == ["aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "chacha20-poly1305"]


@cache
def _c_enums() -> dict[str, dict[str, int]]:
    """enum name -> {constant: value} for the explicit-valued enums of the C API header."""
    text = HEADER.read_text()
    out: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"enum\s+(\w+)\s*\{([^}]*)\}", text):
        out[m.group(1)] = {k: int(v, 0) for k, v in re.findall(r"(IE_\w+)\s*=\s*(\w+)", m.group(2))}
    return out


def _c_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper())


def test_c_enums_match_the_header() -> None:
    enums = _c_enums()
    assert {f"IE_ENCR_{_c_name(n)}": v for n, v in A.C_ESP_ENCR.items()} == enums["ie_esp_encr"]
    integ = {("IE_INTEG_NONE" if n is None else f"IE_INTEG_{_c_name(n)}"): v for n, v in A.C_ESP_INTEG.items()}
    assert integ == enums["ie_esp_integ"]
    assert {f"IE_MACSEC_{_c_name(n)}": v for n, v in A.C_MACSEC_CIPHER.items()} == enums["ie_macsec_cipher"]


def test_macsec_suites() -> None:
    # 802.1AE-2018 Table 14-1
    assert {c.name: c.suite_id for c in A.MACSEC.values()} == {
        "gcm-aes-128": 0x0080C20001000001, "gcm-aes-256": 0x0080C20001000002,
        "gcm-aes-xpn-128": 0x0080C20001000003, "gcm-aes-xpn-256": 0x0080C20001000004}
    assert A.MACSEC_CIPHERS == {"gcm-aes-128": (16, False), "gcm-aes-256": (32, False),
                                "gcm-aes-xpn-128": (16, True), "gcm-aes-xpn-256": (32, True)}


def test_azure_names_resolve_to_registry_keywords() -> None:
    known = {*A.ENCR, *A.INTEG, *A.PRF, *A.KE, "des", "PFSMM"}  # DES: an Azure name config refuses
    values: list[str | None] = [*A.AZURE_IKE_ENCRYPTION.values(), *A.AZURE_DH_GROUP.values(),
                                *A.AZURE_IPSEC_ENCRYPTION.values(), *A.AZURE_IPSEC_INTEGRITY.values(),
                                *A.AZURE_PFS_GROUP.values()]
    values += [x for pair in A.AZURE_IKE_INTEGRITY.values() for x in pair]
    assert not [v for v in values if v is not None and v not in known]


@cache
def _strongswan_strings() -> frozenset[str]:
    return frozenset(m.decode() for m in re.findall(rb"[\x20-\x7e]{3,}", STRONGSWAN_LIB.read_bytes()))


@pytest.mark.skipif(not STRONGSWAN_LIB.exists(), reason="strongSwan not installed")
def test_swan_names_exist_in_strongswan() -> None:
    """The enum names charon prints (list-sas encr-alg, dh-group...) are strongSwan's own."""
    known = _strongswan_strings()
    names = {x.swan_name for x in (*A.ENCR_LIST, *A.PRF_LIST, *A.INTEG_LIST, *A.KE_LIST)}
    missing = [n for n in names if n not in known and not any(s.endswith(n) for s in known)]
    assert not missing
