"""IKEv2 cryptography: prf / prf+, SKEYSEED and key derivation, key exchange groups, and the
SK payload cipher (RFC 7296 sections 2.13-2.18 and 3.14, RFC 5282 for AEAD, RFC 5903/8031).

Everything is deterministic given its inputs; randomness (DH private keys, IVs) is passed in.
Algorithm numbers are IANA transform IDs.

MODP exponentiations run in OpenSSL (through pyca/cryptography's FFDH with our own private
exponent, so published vectors still reproduce): 5-10x faster than Python's ``pow()`` for groups
5 and 14-18 and 24.  Groups 1 and 2 stay on ``pow()``: OpenSSL does not know those primes and
re-validates them on every operation (20-70 ms), while ``pow()`` needs about 1 ms there.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.utils import CryptographyDeprecationWarning

from ipsecemu.base.algorithms import (
    ESP_CIPHER_BY_ID,
    INTEG_BY_ID,
    PRF_HASH_BY_ID,
    PRF_ID_BY_SWAN_NAME,
    EspCipher,
    IntegAlg,
)

from .consts import Notify
from .errors import IntegrityError, LocalProtocolError, RemoteProtocolError
from .modp import MODP_GROUP24, MODP_PRIMES

Rng = Callable[[int], bytes]

# --- algorithm tables -------------------------------------------------------------------------


# The tables are the registry's (ipsecemu.base.algorithms), keyed here by IANA transform ID.
#: ENCR transform ID -> parameters (data-plane name, block, IV, salt, ICV, key sizes)
ENCR: dict[int, EspCipher] = ESP_CIPHER_BY_ID
#: INTEG transform ID -> algorithm (key_len, icv_len, hash)
INTEG: dict[int, IntegAlg] = {i: a for i, a in INTEG_BY_ID.items() if a.hash}
#: PRF transform ID -> hash name (all HMAC based)
PRF: dict[int, str] = PRF_HASH_BY_ID
#: PRF names used by vector files and logs
PRF_NAMES: dict[str, int] = PRF_ID_BY_SWAN_NAME

_ECP: dict[int, Callable[[], ec.EllipticCurve]] = {19: ec.SECP256R1, 20: ec.SECP384R1, 21: ec.SECP521R1}
#: MODP private exponent sizes in bits: 2 x the strength estimate of RFC 3526 section 8, >= 256
_MODP_EXP_BITS = {1: 256, 2: 256, 5: 256, 14: 320, 15: 384, 16: 448, 17: 512, 18: 512}

#: MODP groups whose exponentiations go to OpenSSL (see the module docstring for 1 and 2)
_OPENSSL_MODP = frozenset({5, 14, 15, 16, 17, 18, 24})
_DH_PARAMS: dict[int, dh.DHParameterNumbers] = {}


@contextmanager
def _ffdh_quiet() -> Iterator[None]:
    """Silence only cryptography's "FFDH is deprecated" warning: IKE's MODP groups are FFDH."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Diffie-Hellman over finite fields", category=CryptographyDeprecationWarning
        )
        yield


def _dh_params(group: int, p: int, g: int, q: int | None) -> dh.DHParameterNumbers:
    pn = _DH_PARAMS.get(group)
    if pn is None:
        with _ffdh_quiet():
            pn = _DH_PARAMS[group] = dh.DHParameterNumbers(p, g, q)
    return pn


#: every supported key exchange group
KE_GROUPS: frozenset[int] = frozenset({*MODP_PRIMES, 24, *_ECP, 31, 32})


def encr_key_len(encr_id: int, keylen_bits: int | None) -> int:
    """Key material length (bytes) for an ENCR transform, *including* the AEAD salt."""
    alg = ENCR.get(encr_id)
    if alg is None:
        raise LocalProtocolError(f"unsupported encryption transform {encr_id}")
    if alg.needs_keylen_attr:
        if keylen_bits is None or keylen_bits // 8 not in alg.key_lens or keylen_bits % 8:
            raise LocalProtocolError(f"encryption transform {encr_id}: bad key length {keylen_bits}")
        return keylen_bits // 8 + alg.salt_len
    return alg.key_lens[0] + alg.salt_len


# --- prf, prf+, key derivation -----------------------------------------------------------------


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    try:
        return hmac.new(key, data, PRF[prf_id]).digest()
    except KeyError:
        raise LocalProtocolError(f"unsupported PRF transform {prf_id}") from None


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 section 2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out = bytearray()
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise LocalProtocolError("prf+ cannot produce more than 255 blocks")
        t = prf(prf_id, key, t + seed + bytes([n]))
        out += t
        n += 1
    return bytes(out[:length])


def skeyseed(prf_id: int, ni: bytes, nr: bytes, gir: bytes) -> bytes:
    return prf(prf_id, ni + nr, gir)


def rekey_skeyseed(prf_id: int, old_sk_d: bytes, gir: bytes, ni: bytes, nr: bytes) -> bytes:
    """RFC 7296 section 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)."""
    return prf(prf_id, old_sk_d, gir + ni + nr)


@dataclass(frozen=True)
class IkeKeys:
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:  # keys never end up in logs by accident
        return "IkeKeys(<redacted>)"


def derive_ike_keys(
    prf_id: int,
    encr_id: int,
    keylen_bits: int | None,
    integ_id: int | None,
    seed_key: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf_len = hashlib.new(PRF[prf_id]).digest_size
    ek = encr_key_len(encr_id, keylen_bits)
    ak = INTEG[integ_id].key_len if integ_id else 0
    km = prf_plus(prf_id, seed_key, ni + nr + spi_i + spi_r, 3 * prf_len + 2 * ak + 2 * ek)
    parts = []
    pos = 0
    for n in (prf_len, ak, ak, ek, ek, prf_len, prf_len):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(*parts)


def child_keymat(prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, length: int, gir: bytes = b"") -> bytes:
    """RFC 7296 section 2.17: KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr)."""
    return prf_plus(prf_id, sk_d, gir + ni + nr, length)


# --- key exchange --------------------------------------------------------------------------------


def _bad_ke(group: int, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid KE public value for group {group}: {why}", Notify.INVALID_SYNTAX)


class KeyExchange:
    """One side of a Diffie-Hellman exchange in IKE group ``group``.

    ``public`` is the KE payload data; ``shared_secret(peer)`` gives g^ir as RFC 7296 /
    RFC 5903 / RFC 8031 define it.  Peer public values are checked (range / on-curve /
    non-zero result) and rejected with RemoteProtocolError."""

    def __init__(self, group: int, rng: Rng | None = None, *, private: bytes | None = None) -> None:
        if group not in KE_GROUPS:
            raise LocalProtocolError(f"unsupported key exchange group {group}")
        self.group = group
        if private is None:
            if rng is None:
                raise LocalProtocolError("KeyExchange needs rng or private")
            private = rng(self._private_len())
            self._setup(private, exact=False)
        else:
            self._setup(private, exact=True)

    def _private_len(self) -> int:
        if self.group in MODP_PRIMES:
            # exponent of twice the group's strength (RFC 3526 section 8 / NIST SP 800-57), at
            # least 256 bits: as secure as a full-length one and 4-8x faster with pow()
            return _MODP_EXP_BITS.get(self.group, 512) // 8
        if self.group == 24:
            return 40
        if self.group in _ECP:
            return (_ECP[self.group]().key_size + 7) // 8 + 8
        return 32 if self.group == 31 else 56

    def _setup(self, private: bytes, exact: bool) -> None:
        """``exact``: use ``private`` as the scalar (vectors); else reduce random bytes into range."""
        g = self.group
        if g in MODP_PRIMES or g == 24:
            p, gen, q = (MODP_PRIMES[g], 2, (MODP_PRIMES[g] - 1) // 2) if g != 24 else MODP_GROUP24
            self._p, self._q = p, q
            x = int.from_bytes(private, "big")
            self._x = x if exact else x % (q - 1) + 1
            if not 1 <= self._x < q:
                raise LocalProtocolError(f"group {g}: private exponent out of range")
            size = (p.bit_length() + 7) // 8
            self._dh: dh.DHPrivateKey | None = None
            if g in _OPENSSL_MODP:
                self._pn = pn = _dh_params(g, p, gen, q if g == 24 else None)
                with _ffdh_quiet():
                    # the public number handed in is a placeholder OpenSSL never uses for exchange();
                    # our public value g^x is the "shared secret" with a peer whose public value is g
                    self._dh = dh.DHPrivateNumbers(self._x, dh.DHPublicNumbers(gen, pn)).private_key()
                    gx = self._dh.exchange(dh.DHPublicNumbers(gen, pn).public_key())
                self.public = gx.rjust(size, b"\0")
            else:
                self.public = pow(gen, self._x, p).to_bytes(size, "big")
        elif g in _ECP:
            curve = _ECP[g]()
            d = int.from_bytes(private, "big")
            # the group order of every NIST curve exceeds 2^(bits-1), so this lands in [1, n-1]
            self._ec = ec.derive_private_key(d if exact else d % (1 << (curve.key_size - 1)) + 1, curve)
            pt = self._ec.public_key().public_numbers()
            size = (self._ec.curve.key_size + 7) // 8
            self.public = pt.x.to_bytes(size, "big") + pt.y.to_bytes(size, "big")
        elif g == 31:
            self._xk: x25519.X25519PrivateKey | x448.X448PrivateKey
            self._xk = x25519.X25519PrivateKey.from_private_bytes(private)
            self.public = self._xk.public_key().public_bytes_raw()
        else:
            self._xk = x448.X448PrivateKey.from_private_bytes(private)
            self.public = self._xk.public_key().public_bytes_raw()

    @staticmethod
    def public_len(group: int) -> int:
        if group in MODP_PRIMES:
            return (MODP_PRIMES[group].bit_length() + 7) // 8
        if group == 24:
            return 256
        if group in _ECP:
            return 2 * ((_ECP[group]().key_size + 7) // 8)
        if group == 31:
            return 32
        if group == 32:
            return 56
        raise LocalProtocolError(f"unsupported key exchange group {group}")

    def shared_secret(self, peer: bytes) -> bytes:
        g = self.group
        if len(peer) != self.public_len(g):
            raise _bad_ke(g, f"length {len(peer)}, expected {self.public_len(g)}")
        if g in MODP_PRIMES or g == 24:
            y = int.from_bytes(peer, "big")
            if not 1 < y < self._p - 1:
                raise _bad_ke(g, "out of range")
            if g == 24 and pow(y, self._q, self._p) != 1:
                raise _bad_ke(g, "not in the prime-order subgroup")
            if self._dh is None:
                return pow(y, self._x, self._p).to_bytes(len(peer), "big")
            try:
                with _ffdh_quiet():
                    gxy = self._dh.exchange(dh.DHPublicNumbers(y, self._pn).public_key())
                return gxy.rjust(len(peer), b"\0")
            except ValueError:
                raise _bad_ke(g, "rejected by OpenSSL") from None
        if g in _ECP:
            try:
                pub = ec.EllipticCurvePublicKey.from_encoded_point(_ECP[g](), b"\x04" + peer)
            except ValueError:
                raise _bad_ke(g, "point not on the curve") from None
            # g^ir is the x coordinate only (RFC 5903 section 7)
            return self._ec.exchange(ec.ECDH(), pub)
        try:
            if isinstance(self._xk, x25519.X25519PrivateKey):  # group 31; else 32 (X448)
                out = self._xk.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            else:
                out = self._xk.exchange(x448.X448PublicKey.from_public_bytes(peer))
        except ValueError:
            raise _bad_ke(g, "low-order point") from None
        if not any(out):  # RFC 8031 section 2: all-zero result must be rejected
            raise _bad_ke(g, "all-zero shared secret")
        return out


# --- SK payload --------------------------------------------------------------------------------


class SkCipher:
    """One direction of the SK payload protection: encryption + integrity (or an AEAD)."""

    def __init__(self, encr_id: int, enc_key: bytes, integ_id: int | None, integ_key: bytes) -> None:
        self.encr = ENCR[encr_id]
        self.encr_id = encr_id
        self._key = enc_key
        if self.encr.aead:
            self._salt = enc_key[-self.encr.salt_len :]
            k = enc_key[: -self.encr.salt_len]
            self._aead = ChaCha20Poly1305(k) if encr_id == 28 else AESGCM(k)
            self._aead_key = k
            self.icv_len = self.encr.icv_len
            self._integ_hash: str | None = None
        else:
            if integ_id is None:
                raise LocalProtocolError("non-AEAD encryption needs an integrity algorithm")
            integ = INTEG[integ_id]
            self._integ_hash = integ.hash  # never None: INTEG keeps only the hashed algorithms
            self._integ_key = integ_key
            self.icv_len = integ.icv_len

    def body_len(self, content_len_without_pad: int) -> tuple[int, int]:
        """(pad_len, SK body length = IV | ciphertext | ICV) for ``inner`` of this length
        (content = inner | padding | pad_length octet)."""
        blk = self.encr.block if not self.encr.aead else 1
        pad = (-(content_len_without_pad + 1)) % blk
        return pad, self.encr.iv_len + content_len_without_pad + pad + 1 + self.icv_len

    def seal(self, assoc: bytes, inner: bytes, iv: bytes, pad_bytes: bytes | None = None) -> bytes:
        """Return IV | ciphertext | ICV.  ``assoc`` = IKE header | SK generic header (their
        length fields already final)."""
        pad, _ = self.body_len(len(inner))
        content = inner + (pad_bytes if pad_bytes is not None else bytes(pad)) + bytes([pad])
        if len(iv) != self.encr.iv_len:
            raise LocalProtocolError(f"IV must be {self.encr.iv_len} bytes")
        if self.encr.aead:
            return iv + self._aead_seal(self._nonce(iv), content, assoc)
        enc = self._cbc(iv).encryptor()
        ct = enc.update(content) + enc.finalize()
        assert self._integ_hash is not None  # not AEAD: __init__ set it
        icv = hmac.new(self._integ_key, assoc + iv + ct, self._integ_hash).digest()[: self.icv_len]
        return iv + ct + icv

    def open(self, assoc: bytes, body: bytes) -> bytes:
        """Verify and decrypt IV | ciphertext | ICV; return the inner payloads (padding removed).
        Raises IntegrityError on a bad ICV / tag, ParseError-like RemoteProtocolError on bad padding."""
        iv_len, icv_len = self.encr.iv_len, self.icv_len
        if len(body) < iv_len + icv_len + 1:
            raise IntegrityError("SK payload too short")
        iv = body[:iv_len]
        if self.encr.aead:
            try:
                content = self._aead_open(self._nonce(iv), body[iv_len:], assoc)
            except InvalidTag:
                raise IntegrityError() from None
        else:
            ct, icv = body[iv_len:-icv_len], body[-icv_len:]
            assert self._integ_hash is not None  # not AEAD: __init__ set it
            want = hmac.new(self._integ_key, assoc + body[:-icv_len], self._integ_hash).digest()[:icv_len]
            if not hmac.compare_digest(want, icv):
                raise IntegrityError()
            if not ct or len(ct) % self.encr.block:
                raise RemoteProtocolError("SK ciphertext not block aligned", Notify.INVALID_SYNTAX)
            dec = self._cbc(iv).decryptor()
            content = dec.update(ct) + dec.finalize()
        return self.strip_padding(content)

    @staticmethod
    def strip_padding(content: bytes) -> bytes:
        pad = content[-1] if content else 0
        if not content or pad + 1 > len(content):
            raise RemoteProtocolError("SK padding length too long", Notify.INVALID_SYNTAX)
        return content[: len(content) - pad - 1]

    def decrypt_unauthenticated(self, body: bytes) -> bytes:
        """CBC decryption without the ICV check (for captures whose keys lack SK_a); tests only."""
        iv_len = self.encr.iv_len
        ct = body[iv_len : len(body) - self.icv_len]
        dec = self._cbc(body[:iv_len]).decryptor()
        return dec.update(ct) + dec.finalize()

    def _aead_seal(self, nonce: bytes, content: bytes, aad: bytes) -> bytes:
        if self.icv_len == 16:
            return self._aead.encrypt(nonce, content, aad)
        # truncated GCM tags (ENCR_AES_GCM_8/12) need the streaming API
        enc = Cipher(algorithms.AES(self._aead_key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(content) + enc.finalize()
        return ct + enc.tag[: self.icv_len]

    def _aead_open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if self.icv_len == 16:
            return self._aead.decrypt(nonce, data, aad)
        ct, tag = data[: -self.icv_len], data[-self.icv_len :]
        dec = Cipher(algorithms.AES(self._aead_key), modes.GCM(nonce, tag, min_tag_length=self.icv_len)).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(ct) + dec.finalize()

    def _nonce(self, iv: bytes) -> bytes:
        return self._salt + iv

    def _cbc(self, iv: bytes) -> Cipher[modes.CBC]:
        if self.encr_id == 3:
            return Cipher(TripleDES(self._key), modes.CBC(iv))
        return Cipher(algorithms.AES(self._key), modes.CBC(iv))

    def __repr__(self) -> str:
        return f"SkCipher({self.encr.name}, <keys redacted>)"
