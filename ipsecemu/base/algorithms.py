"""The one algorithm registry of ipsecemu: every fact about an algorithm, written once.

Per algorithm: the IANA IKEv2 transform type and ID (RFC 7296 §3.3.2, IANA "IKEv2 Parameters"), key
sizes, the ESP parameters (block, IV, ICV, salt), the C enum value the native data path uses
(``native/include/ipsecemu.h``), the strongSwan proposal keyword and enum name, the Wireshark UAT
names (``esp_sa``, ``ikev2_decryption_table``), and the Azure policy names.  ``ike.transforms``,
``ike.crypto``, ``base.satypes``, ``dataplane``, ``pcap.uat``, the strongSwan glue and lab capture read
these tables; nothing else keeps its own copy.  Adding an algorithm: one entry here, then the code
that implements it (docs/ARCHITECTURE.md, "How to add an algorithm").
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
    c_enum: int | None = None  # enum ie_esp_encr in native/include/ipsecemu.h; None: no C fast path

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
    c_enum: int | None = None  # enum ie_esp_integ in native/include/ipsecemu.h; None: no C fast path


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


# ---------------------------------------------------------------- IKE/ESP encryption
def _aes_cbc(bits: int) -> EncrAlg:
    return EncrAlg(
        f"aes{bits}", 12, bits, bits // 8, 0, 16, 16, 0, False, "aes-cbc", True,
        "AES-CBC [RFC3602]", f"AES-CBC-{bits} [RFC3602]", "AES_CBC", c_enum=4,
    )


def _aes_gcm(bits: int, icv: int) -> EncrAlg:
    return EncrAlg(
        f"aes{bits}gcm{icv}", {8: 18, 12: 19, 16: 20}[icv], bits, bits // 8, 4, 8, 4, icv, True,
        f"aes-gcm-{icv}", True,
        f"AES-GCM with {icv} octet ICV [RFC4106]", f"AES-GCM-{bits} with {icv} octet ICV [RFC5282]",
        f"AES_GCM_{icv}", c_enum={8: 1, 12: 2, 16: 3}[icv],
    )


ENCR_LIST: list[EncrAlg] = [
    *(_aes_cbc(b) for b in (128, 192, 256)),
    *(_aes_gcm(b, i) for b in (128, 192, 256) for i in (8, 12, 16)),
    EncrAlg("3des", 3, None, 24, 0, 8, 8, 0, False, "3des-cbc", True,
            "TripleDES-CBC [RFC2451]", "3DES [RFC2451]", "3DES_CBC", c_enum=5),
    EncrAlg("null", 11, None, 0, 0, 0, 4, 0, False, "null", False, "NULL", None, "NULL"),
    EncrAlg("chacha20poly1305", 28, None, 32, 4, 8, 4, 16, True, "chacha20-poly1305", True,
            None, None, "CHACHA20_POLY1305"),
]

#: strongSwan keyword -> encryption transform
ENCR: dict[str, EncrAlg] = {e.keyword: e for e in ENCR_LIST}

# strongSwan aliases: plain "aes" is AES-128-CBC, "aesNNNgcm" is the 16-octet ICV variant, and the
# ICV may be given in bits (gcm64/gcm96/gcm128).
ENCR_ALIASES: dict[str, str] = {"aes": "aes128"}
for _b in (128, 192, 256):
    ENCR_ALIASES[f"aes{_b}gcm"] = f"aes{_b}gcm16"
    for _octets in (8, 12, 16):
        ENCR_ALIASES[f"aes{_b}gcm{_octets * 8}"] = f"aes{_b}gcm{_octets}"

# ---------------------------------------------------------------- PRF
PRF_LIST: list[PrfAlg] = [
    # HMAC-MD5 only because Azure's IKE integrity "MD5" doubles as the PRF (Azure policy names)
    PrfAlg("prfmd5", 1, "md5", 16, "md5", "PRF_HMAC_MD5"),
    PrfAlg("prfsha1", 2, "sha1", 20, "sha1", "PRF_HMAC_SHA1"),
    PrfAlg("prfsha256", 5, "sha256", 32, "sha256", "PRF_HMAC_SHA2_256"),
    PrfAlg("prfsha384", 6, "sha384", 48, "sha384", "PRF_HMAC_SHA2_384"),
    PrfAlg("prfsha512", 7, "sha512", 64, "sha512", "PRF_HMAC_SHA2_512"),
]
PRF: dict[str, PrfAlg] = {p.keyword: p for p in PRF_LIST}

# ---------------------------------------------------------------- integrity
INTEG_LIST: list[IntegAlg] = [
    IntegAlg("md5", 1, "md5", 16, 12, "hmac-md5-96", "HMAC-MD5-96 [RFC2403]", "HMAC_MD5_96 [RFC2403]",
             "HMAC_MD5_96"),
    IntegAlg("sha1", 2, "sha1", 20, 12, "hmac-sha1-96", "HMAC-SHA-1-96 [RFC2404]", "HMAC_SHA1_96 [RFC2404]",
             "HMAC_SHA1_96", c_enum=1),
    IntegAlg("sha256", 12, "sha256", 32, 16, "hmac-sha256-128",
             "HMAC-SHA-256-128 [RFC4868]", "HMAC_SHA2_256_128 [RFC4868]", "HMAC_SHA2_256_128", c_enum=2),
    IntegAlg("sha384", 13, "sha384", 48, 24, "hmac-sha384-192",
             "HMAC-SHA-384-192 [RFC4868]", "HMAC_SHA2_384_192 [RFC4868]", "HMAC_SHA2_384_192", c_enum=3),
    IntegAlg("sha512", 14, "sha512", 64, 32, "hmac-sha512-256",
             "HMAC-SHA-512-256 [RFC4868]", "HMAC_SHA2_512_256 [RFC4868]", "HMAC_SHA2_512_256", c_enum=4),
]
INTEG: dict[str, IntegAlg] = {i.keyword: i for i in INTEG_LIST}
INTEG_ALIASES: dict[str, str] = {"sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512"}
#: INTEG NONE (ID 0): what an AEAD proposal may carry explicitly; never parsed from a keyword.
INTEG_NONE = IntegAlg("none", 0, None, 0, 0, None, "NULL", "NONE [RFC4306]", "NONE", c_enum=0)

# ---------------------------------------------------------------- key exchange
KE_LIST: list[KeGroup] = [
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
KE: dict[str, KeGroup] = {g.keyword: g for g in KE_LIST}
KE_ALIASES: dict[str, str] = {"x25519": "curve25519"}
#: KE NONE (ID 0): "PFS optional" marker in ESP proposals; never parsed from a keyword.
KE_NONE = KeGroup("none", 0, "none", 0, 0, swan_name="NONE")

# ---------------------------------------------------------------- ESN
ESN: dict[str, EsnAlg] = {
    "noesn": EsnAlg("noesn", 0, False, "NO_EXT_SEQ"),
    "esn": EsnAlg("esn", 1, True, "EXT_SEQ"),
}


# ---------------------------------------------------------------- ESP views (data-plane names)
@dataclass(frozen=True)
class EspCipher:
    """One ESP encryption algorithm over all its key sizes, by data-plane name ("aes-gcm-16")."""

    name: str
    id: int  # IANA ENCR ID
    key_lens: tuple[int, ...]  # bytes, without salt
    salt_len: int
    iv_len: int
    block: int  # padding alignment
    icv_len: int  # AEAD tag length, 0 for classic ciphers
    needs_keylen_attr: bool  # the IKE proposal carries a Key Length attribute
    c_enum: int | None

    @property
    def aead(self) -> bool:
        return self.icv_len > 0


def _esp_ciphers() -> dict[str, EspCipher]:
    out: dict[str, EspCipher] = {}
    # AEAD first, then the classic ciphers: the order ESP_ENCR has always listed them in
    for e in sorted((e for e in ENCR_LIST if e.esp_name), key=lambda e: not e.aead):
        assert e.esp_name is not None
        prev = out.get(e.esp_name)
        keys = (*prev.key_lens, e.key_len) if prev else (e.key_len,)
        out[e.esp_name] = EspCipher(e.esp_name, e.id, keys, e.salt_len, e.iv_len, e.block, e.icv_len,
                                    e.key_bits is not None, e.c_enum)
    return out


#: data-plane name -> ESP encryption algorithm
ESP_CIPHERS: dict[str, EspCipher] = _esp_ciphers()
#: IANA ENCR ID -> ESP encryption algorithm (what ike.crypto keys its SK cipher by)
ESP_CIPHER_BY_ID: dict[int, EspCipher] = {c.id: c for c in ESP_CIPHERS.values()}
#: name -> (allowed key lengths *without* salt, salt length, IV length, block size, ICV length or 0)
ESP_ENCR: dict[str, tuple[tuple[int, ...], int, int, int, int]] = {
    n: (c.key_lens, c.salt_len, c.iv_len, c.block, c.icv_len) for n, c in ESP_CIPHERS.items()
}
AEAD_ESP_ENCR = frozenset(n for n, c in ESP_CIPHERS.items() if c.aead)
#: name -> (key length, ICV length, hash name for hmac)
ESP_INTEG: dict[str, tuple[int, int, str]] = {
    i.esp_name: (i.key_len, i.icv_len, i.hash) for i in INTEG_LIST if i.esp_name and i.hash
}
#: IANA INTEG ID -> integrity algorithm
INTEG_BY_ID: dict[int, IntegAlg] = {i.id: i for i in INTEG_LIST}
#: IANA PRF ID -> hash name (every PRF here is HMAC based)
PRF_HASH_BY_ID: dict[int, str] = {p.id: p.hash for p in PRF_LIST}
#: strongSwan PRF enum name ("PRF_HMAC_SHA2_256") -> IANA ID (vector files and logs use these)
PRF_ID_BY_SWAN_NAME: dict[str, int] = {p.swan_name: p.id for p in PRF_LIST}

#: The C data path's enums (native/include/ipsecemu.h), by data-plane name
C_ESP_ENCR: dict[str, int] = {n: c.c_enum for n, c in ESP_CIPHERS.items() if c.c_enum is not None}
C_ESP_INTEG: dict[str | None, int] = {
    **{i.esp_name: i.c_enum for i in INTEG_LIST if i.c_enum is not None},
    None: 0,  # IE_INTEG_NONE: AEAD SAs
}


# ---------------------------------------------------------------- MACsec
@dataclass(frozen=True)
class MacsecCipher:
    """One MACsec Cipher Suite (IEEE 802.1AE §14)."""

    name: str  # ipsecemu / iproute2 spelling
    key_len: int  # SAK bytes
    xpn: bool
    c_enum: int  # enum ie_macsec_cipher
    suite_id: int  # 802.1AE Cipher Suite identifier (MKA announces it)
    azure: str  # Azure ExpressRoute Direct's macSecConfig cipher name


_MACSEC_LIST: list[MacsecCipher] = [
    MacsecCipher("gcm-aes-128", 16, False, 1, 0x0080C20001000001, "GcmAes128"),
    MacsecCipher("gcm-aes-256", 32, False, 2, 0x0080C20001000002, "GcmAes256"),
    MacsecCipher("gcm-aes-xpn-128", 16, True, 3, 0x0080C20001000003, "GcmAesXpn128"),
    MacsecCipher("gcm-aes-xpn-256", 32, True, 4, 0x0080C20001000004, "GcmAesXpn256"),
]
MACSEC: dict[str, MacsecCipher] = {c.name: c for c in _MACSEC_LIST}
#: name -> (SAK length, XPN)
MACSEC_CIPHERS: dict[str, tuple[int, bool]] = {c.name: (c.key_len, c.xpn) for c in _MACSEC_LIST}
C_MACSEC_CIPHER: dict[str, int] = {c.name: c.c_enum for c in _MACSEC_LIST}
#: name -> Azure's cipher name (ExpressRoute Direct macSecConfig)
AZURE_MACSEC_CIPHER: dict[str, str] = {c.name: c.azure for c in _MACSEC_LIST}


# ---------------------------------------------------------------- Wireshark names without an entry above
#: esp_sa encryption strings read from key files: newer-Wireshark names of algorithms above, and the
#: algorithms Wireshark knows that ipsecemu cannot decrypt (None).
WIRESHARK_ESP_ENCR_EXTRA: dict[str, str | None] = {
    "ChaCha20 with Poly1305 [RFC7634]": "chacha20-poly1305",  # Wireshark >= 4.2; tshark 4.0 rejects it
    "AES-CTR [RFC3686]": None,
    "DES-CBC [RFC2405]": None,
    "CAST5-CBC [RFC2144]": None,
    "BLOWFISH-CBC [RFC2451]": None,
    "TWOFISH-CBC": None,
    "AES-GCM with IIV and 16 octet ICV [RFC4106 & RFC8750]": None,
    "ChaCha20 with Poly1305 and IIV [RFC7634 & RFC8750]": None,
}
#: esp_sa authentication strings beyond INTEG's: -> (ESP_INTEG name or None, ICV length, checked).
#: "ANY n bit" and "NULL" mean: the ICV is (n/8 bytes or absent and) not verified.
WIRESHARK_ESP_AUTH_EXTRA: dict[str, tuple[str | None, int, bool]] = {
    "NULL": (None, 0, False),
    "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]": (None, 12, True),
    "MAC-RIPEMD-160-96 [RFC2857]": (None, 12, True),
    **{f"ANY {n} bit authentication [no checking]": (None, n // 8, False) for n in (64, 96, 128, 192, 256)},
}
#: ikev2_decryption_table encryption strings for keywords that are not IKE ciphers above
WIRESHARK_IKE_ENCR_EXTRA: dict[str, str] = {
    "null": "NULL [RFC2410]",
    **{f"aes{b}ctr": f"AES-CTR-{b} [RFC5930]" for b in (128, 192, 256)},
    **{f"aes{b}ccm{i}": f"AES-CCM-{b} with {i} octet ICV [RFC5282]" for b in (128, 192, 256) for i in (8, 12, 16)},
}
#: ikev2_decryption_table integrity strings for keywords that are not in INTEG
WIRESHARK_IKE_INTEG_EXTRA: dict[str, str] = {
    "md5_128": "HMAC_MD5_128 [RFC4595]",
    "sha1_160": "HMAC_SHA1_160 [RFC4595]",
    "sha256_96": "HMAC_SHA2_256_96 [draft-ietf-ipsec-ciph-sha-256-00]",
    **{f"any{n}": f"ANY {n}-bits of Authentication [No Checking]" for n in (64, 96, 128, 160, 192, 256)},
}


# ---------------------------------------------------------------- Azure policy names
# Azure's IPsec/IKE policy values (az network vpn-connection ipsec-policy) -> strongSwan keywords.
# None marks "None" (no algorithm); DES has no keyword implementation here (refused by config).
AZURE_IKE_ENCRYPTION: dict[str, str] = {
    "DES": "des", "DES3": "3des", "AES128": "aes128", "AES192": "aes192", "AES256": "aes256",
    "GCMAES128": "aes128gcm16", "GCMAES256": "aes256gcm16",
}
# IKE integrity -> (integrity keyword or None for GCM, PRF keyword).  Azure uses the IKE integrity
# algorithm as the PRF too; with GCM we pick the SHA-2 PRF matching the key size.
AZURE_IKE_INTEGRITY: dict[str, tuple[str | None, str]] = {
    "MD5": ("md5", "prfmd5"), "SHA1": ("sha1", "prfsha1"), "SHA256": ("sha256", "prfsha256"),
    "SHA384": ("sha384", "prfsha384"), "GCMAES128": (None, "prfsha256"), "GCMAES256": (None, "prfsha384"),
}
AZURE_DH_GROUP: dict[str, str | None] = {
    "None": None, "DHGroup1": "modp768", "DHGroup2": "modp1024", "DHGroup14": "modp2048",
    "DHGroup2048": "modp2048", "DHGroup24": "modp2048s256", "ECP256": "ecp256", "ECP384": "ecp384",
}
AZURE_IPSEC_ENCRYPTION: dict[str, str] = {
    "None": "null", "DES": "des", "DES3": "3des", "AES128": "aes128", "AES192": "aes192", "AES256": "aes256",
    "GCMAES128": "aes128gcm16", "GCMAES192": "aes192gcm16", "GCMAES256": "aes256gcm16",
}
AZURE_IPSEC_INTEGRITY: dict[str, str | None] = {
    "MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "GCMAES128": None, "GCMAES192": None, "GCMAES256": None,
}
# "PFSMM": the PFS group is the IKE DH group (main mode's)
AZURE_PFS_GROUP: dict[str, str | None] = {
    "None": None, "PFS1": "modp768", "PFS2": "modp1024", "PFS2048": "modp2048", "PFS14": "modp2048",
    "PFS24": "modp2048s256", "ECP256": "ecp256", "ECP384": "ecp384", "PFSMM": "PFSMM",
}
