"""MKA key hierarchy (IEEE 802.1X-2010 clause 6.2) built on AES-CMAC.

The KDF is NIST SP 800-108 counter mode with AES-CMAC as the PRF: each 128-bit block is
``CMAC(key, i(1 octet) | Label | 0x00 | Context | L(2 octets))``.  From the pre-shared CAK
(and its name, the CKN) come the ICK (signs every MKPDU) and the KEK (wraps the SAK); the
key server derives each SAK from a fresh KS-nonce.  XPN salts follow 802.1AE-2018 10.7.28.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ipsecemu.base.errors import ProtocolError

ICV_LEN = 16
MI_LEN = 12
CAK_LENS = (16, 32)

LABEL_ICK = b"IEEE8021 ICK"
LABEL_KEK = b"IEEE8021 KEK"
LABEL_SAK = b"IEEE8021 SAK"
LABEL_EAP_CAK = b"IEEE8021 EAP CAK"
LABEL_EAP_CKN = b"IEEE8021 EAP CKN"


class MkaKeyError(ProtocolError, ValueError):
    """A key or key-name argument has the wrong size, or an unwrap failed (a local MKA error)."""


def aes_cmac(key: bytes, message: bytes) -> bytes:
    """AES-CMAC (RFC 4493) with a 128- or 256-bit key."""
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    return mac.finalize()


def cmac_verify(key: bytes, message: bytes, tag: bytes) -> bool:
    """Constant-time check of an AES-CMAC tag."""
    mac = CMAC(algorithms.AES(key))
    mac.update(message)
    try:
        mac.verify(tag)
    except InvalidSignature:
        return False
    return True


def kdf(key: bytes, label: bytes, context: bytes, length_bits: int) -> bytes:
    """802.1X-2010 6.2.1 KDF: AES-CMAC counter mode, 8-bit counter, 16-bit length."""
    if len(key) not in CAK_LENS:
        raise MkaKeyError(f"kdf key: must be 16 or 32 bytes, got {len(key)}")
    if length_bits <= 0 or length_bits % 8 or length_bits > 0xFFFF:
        raise MkaKeyError(f"kdf length: {length_bits} bits is not a usable output size")
    fixed = label + b"\x00" + context + length_bits.to_bytes(2, "big")
    out = b""
    i = 1
    while len(out) * 8 < length_bits:
        out += aes_cmac(key, bytes([i]) + fixed)
        i += 1
    return out[: length_bits // 8]


def _check_cak(cak: bytes, ckn: bytes) -> None:
    if len(cak) not in CAK_LENS:
        raise MkaKeyError(f"cak: must be 16 or 32 bytes (128/256 bit), got {len(cak)}")
    if not 1 <= len(ckn) <= 32:
        raise MkaKeyError(f"ckn: must be 1..32 bytes, got {len(ckn)}")


def _ckn_context(ckn: bytes) -> bytes:
    # The context is the first 16 octets of the CKN, zero-padded when it is shorter.
    return ckn[:16].ljust(16, b"\x00")


def derive_ick(cak: bytes, ckn: bytes) -> bytes:
    """ICK = KDF(CAK, "IEEE8021 ICK", CKN[0:16], |CAK|)."""
    _check_cak(cak, ckn)
    return kdf(cak, LABEL_ICK, _ckn_context(ckn), len(cak) * 8)


def derive_kek(cak: bytes, ckn: bytes) -> bytes:
    """KEK = KDF(CAK, "IEEE8021 KEK", CKN[0:16], |CAK|)."""
    _check_cak(cak, ckn)
    return kdf(cak, LABEL_KEK, _ckn_context(ckn), len(cak) * 8)


def derive_sak(cak: bytes, ks_nonce: bytes, mi_list: list[bytes], kn: int, sak_len: int) -> bytes:
    """SAK = KDF(CAK, "IEEE8021 SAK", KS-nonce | MI list | KN, SAK length)."""
    if len(ks_nonce) != sak_len:
        raise MkaKeyError(f"ks_nonce: must be {sak_len} bytes like the SAK, got {len(ks_nonce)}")
    if any(len(mi) != MI_LEN for mi in mi_list):
        raise MkaKeyError("mi_list: every member identifier must be 12 bytes")
    context = ks_nonce + b"".join(mi_list) + kn.to_bytes(4, "big")
    return kdf(cak, LABEL_SAK, context, sak_len * 8)


def eap_cak(msk: bytes, mac1: bytes, mac2: bytes) -> bytes:
    """CAK from an EAP MSK (128 bit): context is the two MACs, numerically lower first."""
    lo, hi = sorted((mac1, mac2))
    return kdf(msk[:16], LABEL_EAP_CAK, lo + hi, 128)


def eap_ckn(msk: bytes, session_id: bytes, mac1: bytes, mac2: bytes) -> bytes:
    """CKN from an EAP MSK and Session-Id (128 bit)."""
    lo, hi = sorted((mac1, mac2))
    return kdf(msk[:16], LABEL_EAP_CKN, session_id + lo + hi, 128)


def wrap_sak(kek: bytes, sak: bytes) -> bytes:
    """RFC 3394 AES key wrap of the SAK with the KEK (16 -> 24, 32 -> 40 bytes)."""
    return aes_key_wrap(kek, sak)


def unwrap_sak(kek: bytes, wrapped: bytes) -> bytes:
    """Undo :func:`wrap_sak`; raises MkaKeyError when the integrity check fails."""
    if len(wrapped) < 24 or len(wrapped) % 8:
        raise MkaKeyError(f"wrapped SAK: bad length {len(wrapped)}")
    try:
        return aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap as exc:
        raise MkaKeyError("wrapped SAK: unwrap failed (wrong KEK or corrupted)") from exc


def xpn_salt(ks_mi: bytes, kn: int) -> bytes:
    """802.1AE-2018 10.7.28: the 64 LSBs are the key server MI's 64 LSBs; the next 16 bits
    are MI bits XOR the 16 MSBs of KN; the 16 MSBs are MI bits XOR the 16 LSBs of KN."""
    if len(ks_mi) != MI_LEN:
        raise MkaKeyError(f"ks_mi: must be 12 bytes, got {len(ks_mi)}")
    k = kn.to_bytes(4, "big")
    return bytes([ks_mi[0] ^ k[2], ks_mi[1] ^ k[3], ks_mi[2] ^ k[0], ks_mi[3] ^ k[1]]) + ks_mi[4:]
