"""IKEv2 transform registry: the subset of IANA "IKEv2 Parameters" that ipsecemu supports.

One table per transform type, keyed by the strongSwan proposal keyword (``aes256``,
``aes128gcm16``, ``prfsha384``, ``ecp384``, ...).  Each entry carries the IANA ID, sizes, the
data-plane name from :mod:`ipsecemu.base.satypes` (so a negotiated ESP proposal maps straight
to an ``EspSaConfig``) and the Wireshark 4.0 UAT strings used when exporting keys for tshark.

Stable API (imported by the IKE core):

* :class:`TransformType`, :data:`ENCR`, :data:`PRF`, :data:`INTEG`, :data:`KE`, :data:`ESN`
* :func:`encr_by_id`, :func:`prf_by_id`, :func:`integ_by_id`, :func:`ke_by_id`, :func:`esn_by_id`
* :func:`lookup` (keyword -> (type, entry)), :func:`keyword_for`
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TransformType(enum.IntEnum):
    """IANA transform type numbers (RFC 7296 §3.3.2)."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # a.k.a. D-H group
    ESN = 5


#: Transform attribute type "Key Length (in bits)", TV format (RFC 7296 §3.3.5).
ATTR_KEY_LENGTH = 14


@dataclass(frozen=True)
class EncrAlg:
    """One encryption transform at one key size (AES-CBC-128 and AES-CBC-256 are two entries)."""

    keyword: str  # strongSwan keyword, e.g. "aes256gcm16"
    id: int  # IANA ENCR ID
    key_bits: int | None  # value of the Key Length attribute; None = the attribute is not sent
    key_len: int  # key bytes *without* salt
    salt_len: int  # AEAD/CTR salt taken from the keymat after the key
    iv_len: int
    block: int  # padding alignment (4 for AEAD/stream ciphers and NULL)
    icv_len: int  # AEAD tag length, 0 for classic ciphers
    aead: bool
    esp_name: str | None  # ipsecemu.base.satypes.ESP_ENCR key; None if not usable in ESP
    ike_ok: bool  # allowed in IKE SA proposals (ENCR_NULL is ESP only)
    # tshark 4.0 UAT strings (esp_sa "encryption algorithm", ikev2_decryption_table "encryption
    # algorithm"); None where tshark 4.0 cannot decrypt it (ChaCha20, ENCR_NULL in IKE).
    wireshark_esp: str | None
    wireshark_ike: str | None
    swan_name: str = ""  # strongSwan enum name as swanctl prints it ("AES_GCM_16")

    @property
    def keymat_len(self) -> int:
        """Bytes taken from KEYMAT / SK_e for this cipher (key + salt)."""
        return self.key_len + self.salt_len


@dataclass(frozen=True)
class PrfAlg:
    keyword: str  # "prfsha256"
    id: int
    hash: str  # hashlib / cryptography hash name
    out_len: int  # PRF output length = preferred key length (RFC 7296 §2.13)
    integ_keyword: str  # the integrity algorithm strongSwan derives this PRF from
    swan_name: str = ""  # "PRF_HMAC_SHA2_256"


@dataclass(frozen=True)
class IntegAlg:
    keyword: str  # "sha256"
    id: int
    hash: str | None  # None for NONE
    key_len: int
    icv_len: int
    esp_name: str | None  # ipsecemu.base.satypes.ESP_INTEG key
    wireshark_esp: str
    wireshark_ike: str
    swan_name: str = ""  # "HMAC_SHA2_256_128"


@dataclass(frozen=True)
class KeGroup:
    keyword: str  # "modp2048", "ecp256", "curve25519"
    id: int
    kind: str  # "modp" | "ecp" | "x25519" | "none"
    bits: int  # prime size (MODP/ECP) or 255 for Curve25519
    ke_len: int  # length of the KE payload data
    curve: str | None = None  # cryptography curve name for ECP groups
    subgroup_bits: int | None = None  # RFC 5114 group 24: prime order subgroup size
    swan_name: str = ""  # "MODP_2048", "ECP_256", "CURVE_25519"


@dataclass(frozen=True)
class EsnAlg:
    keyword: str  # "esn" | "noesn"
    id: int  # 1 | 0
    enabled: bool
    swan_name: str = ""


# ---------------------------------------------------------------- encryption
def _aes_cbc(bits: int) -> EncrAlg:
    return EncrAlg(
        f"aes{bits}", 12, bits, bits // 8, 0, 16, 16, 0, False, "aes-cbc", True,
        "AES-CBC [RFC3602]", f"AES-CBC-{bits} [RFC3602]", "AES_CBC",
    )


def _aes_gcm(bits: int, icv: int) -> EncrAlg:
    return EncrAlg(
        f"aes{bits}gcm{icv}", {8: 18, 12: 19, 16: 20}[icv], bits, bits // 8, 4, 8, 4, icv, True,
        f"aes-gcm-{icv}", True,
        f"AES-GCM with {icv} octet ICV [RFC4106]", f"AES-GCM-{bits} with {icv} octet ICV [RFC5282]",
        f"AES_GCM_{icv}",
    )


_ENCR_LIST: list[EncrAlg] = [
    *(_aes_cbc(b) for b in (128, 192, 256)),
    *(_aes_gcm(b, i) for b in (128, 192, 256) for i in (8, 12, 16)),
    EncrAlg("3des", 3, None, 24, 0, 8, 8, 0, False, "3des-cbc", True,
            "TripleDES-CBC [RFC2451]", "3DES [RFC2451]", "3DES_CBC"),
    EncrAlg("null", 11, None, 0, 0, 0, 4, 0, False, "null", False, "NULL", None, "NULL"),
    EncrAlg("chacha20poly1305", 28, None, 32, 4, 8, 4, 16, True, "chacha20-poly1305", True,
            None, None, "CHACHA20_POLY1305"),
]

#: strongSwan keyword -> encryption transform
ENCR: dict[str, EncrAlg] = {e.keyword: e for e in _ENCR_LIST}

# strongSwan aliases: plain "aes" is AES-128-CBC, "aesNNNgcm" is the 16-octet ICV variant, and the
# ICV may be given in bits (gcm64/gcm96/gcm128).
ENCR_ALIASES: dict[str, str] = {"aes": "aes128"}
for _b in (128, 192, 256):
    ENCR_ALIASES[f"aes{_b}gcm"] = f"aes{_b}gcm16"
    for _octets in (8, 12, 16):
        ENCR_ALIASES[f"aes{_b}gcm{_octets * 8}"] = f"aes{_b}gcm{_octets}"

# ---------------------------------------------------------------- PRF
_PRF_LIST: list[PrfAlg] = [
    # HMAC-MD5 only because Azure's IKE integrity "MD5" doubles as the PRF (Azure policy names)
    PrfAlg("prfmd5", 1, "md5", 16, "md5", "PRF_HMAC_MD5"),
    PrfAlg("prfsha1", 2, "sha1", 20, "sha1", "PRF_HMAC_SHA1"),
    PrfAlg("prfsha256", 5, "sha256", 32, "sha256", "PRF_HMAC_SHA2_256"),
    PrfAlg("prfsha384", 6, "sha384", 48, "sha384", "PRF_HMAC_SHA2_384"),
    PrfAlg("prfsha512", 7, "sha512", 64, "sha512", "PRF_HMAC_SHA2_512"),
]
PRF: dict[str, PrfAlg] = {p.keyword: p for p in _PRF_LIST}

# ---------------------------------------------------------------- integrity
_INTEG_LIST: list[IntegAlg] = [
    IntegAlg("md5", 1, "md5", 16, 12, "hmac-md5-96", "HMAC-MD5-96 [RFC2403]", "HMAC_MD5_96 [RFC2403]",
             "HMAC_MD5_96"),
    IntegAlg("sha1", 2, "sha1", 20, 12, "hmac-sha1-96", "HMAC-SHA-1-96 [RFC2404]", "HMAC_SHA1_96 [RFC2404]",
             "HMAC_SHA1_96"),
    IntegAlg("sha256", 12, "sha256", 32, 16, "hmac-sha256-128",
             "HMAC-SHA-256-128 [RFC4868]", "HMAC_SHA2_256_128 [RFC4868]", "HMAC_SHA2_256_128"),
    IntegAlg("sha384", 13, "sha384", 48, 24, "hmac-sha384-192",
             "HMAC-SHA-384-192 [RFC4868]", "HMAC_SHA2_384_192 [RFC4868]", "HMAC_SHA2_384_192"),
    IntegAlg("sha512", 14, "sha512", 64, 32, "hmac-sha512-256",
             "HMAC-SHA-512-256 [RFC4868]", "HMAC_SHA2_512_256 [RFC4868]", "HMAC_SHA2_512_256"),
]
INTEG: dict[str, IntegAlg] = {i.keyword: i for i in _INTEG_LIST}
INTEG_ALIASES: dict[str, str] = {"sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512"}
#: INTEG NONE (ID 0): what an AEAD proposal may carry explicitly; never parsed from a keyword.
INTEG_NONE = IntegAlg("none", 0, None, 0, 0, None, "NULL", "NONE [RFC4306]", "NONE")

# ---------------------------------------------------------------- key exchange
_KE_LIST: list[KeGroup] = [
    KeGroup("modp768", 1, "modp", 768, 96, swan_name="MODP_768"),
    KeGroup("modp1024", 2, "modp", 1024, 128, swan_name="MODP_1024"),
    KeGroup("modp1536", 5, "modp", 1536, 192, swan_name="MODP_1536"),
    KeGroup("modp2048", 14, "modp", 2048, 256, swan_name="MODP_2048"),
    KeGroup("modp3072", 15, "modp", 3072, 384, swan_name="MODP_3072"),
    KeGroup("modp4096", 16, "modp", 4096, 512, swan_name="MODP_4096"),
    KeGroup("ecp256", 19, "ecp", 256, 64, curve="secp256r1", swan_name="ECP_256"),
    KeGroup("ecp384", 20, "ecp", 384, 96, curve="secp384r1", swan_name="ECP_384"),
    KeGroup("ecp521", 21, "ecp", 521, 132, curve="secp521r1", swan_name="ECP_521"),
    KeGroup("modp2048s256", 24, "modp", 2048, 256, subgroup_bits=256, swan_name="MODP_2048_256"),
    KeGroup("curve25519", 31, "x25519", 255, 32, swan_name="CURVE_25519"),
]
KE: dict[str, KeGroup] = {g.keyword: g for g in _KE_LIST}
KE_ALIASES: dict[str, str] = {"x25519": "curve25519"}
#: KE NONE (ID 0): "PFS optional" marker in ESP proposals; never parsed from a keyword.
KE_NONE = KeGroup("none", 0, "none", 0, 0, swan_name="NONE")

# ---------------------------------------------------------------- ESN
ESN: dict[str, EsnAlg] = {
    "noesn": EsnAlg("noesn", 0, False, "NO_EXT_SEQ"),
    "esn": EsnAlg("esn", 1, True, "EXT_SEQ"),
}

_TABLES: dict[TransformType, tuple[dict, dict[str, str]]] = {
    TransformType.ENCR: (ENCR, ENCR_ALIASES),
    TransformType.PRF: (PRF, {}),
    TransformType.INTEG: (INTEG, INTEG_ALIASES),
    TransformType.KE: (KE, KE_ALIASES),
    TransformType.ESN: (ESN, {}),
}

Alg = EncrAlg | PrfAlg | IntegAlg | KeGroup | EsnAlg


def lookup(keyword: str) -> tuple[TransformType, Alg] | None:
    """Resolve one strongSwan proposal keyword (case-insensitive, aliases included)."""
    kw = keyword.strip().lower()
    for ttype, (table, aliases) in _TABLES.items():
        kw2 = aliases.get(kw, kw)
        if kw2 in table:
            return ttype, table[kw2]
    return None


def encr_by_id(alg_id: int, key_bits: int | None = None) -> EncrAlg | None:
    """The ENCR entry for an IANA ID and Key Length attribute (None if we do not support it).

    Ciphers with a fixed key size (3DES, NULL, ChaCha20) accept no attribute; AES needs one.
    """
    for e in _ENCR_LIST:
        if e.id == alg_id and e.key_bits == key_bits:
            return e
    return None


def prf_by_id(alg_id: int) -> PrfAlg | None:
    return next((p for p in _PRF_LIST if p.id == alg_id), None)


def integ_by_id(alg_id: int) -> IntegAlg | None:
    if alg_id == 0:
        return INTEG_NONE
    return next((i for i in _INTEG_LIST if i.id == alg_id), None)


def ke_by_id(alg_id: int) -> KeGroup | None:
    if alg_id == 0:
        return KE_NONE
    return next((g for g in _KE_LIST if g.id == alg_id), None)


def esn_by_id(alg_id: int) -> EsnAlg | None:
    return next((e for e in ESN.values() if e.id == alg_id), None)


def by_id(ttype: int, alg_id: int, key_bits: int | None = None) -> Alg | None:
    """Generic lookup by (transform type, IANA ID[, key length])."""
    if ttype not in TransformType._value2member_map_:
        return None
    match TransformType(ttype):
        case TransformType.ENCR:
            return encr_by_id(alg_id, key_bits)
        case TransformType.PRF:
            return prf_by_id(alg_id)
        case TransformType.INTEG:
            return integ_by_id(alg_id)
        case TransformType.KE:
            return ke_by_id(alg_id)
        case TransformType.ESN:
            return esn_by_id(alg_id)
    return None  # pragma: no cover


def keyword_for(ttype: int, alg_id: int, key_bits: int | None = None) -> str:
    """strongSwan keyword for a transform, or a readable placeholder for unknown ones."""
    alg = by_id(ttype, alg_id, key_bits)
    if alg is not None:
        return alg.keyword
    name = TransformType(ttype).name if ttype in TransformType._value2member_map_ else f"T{ttype}"
    suffix = f"_{key_bits}" if key_bits else ""
    return f"{name.lower()}{alg_id}{suffix}"
