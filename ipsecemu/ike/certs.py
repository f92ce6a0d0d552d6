"""X.509 certificate authentication for IKE_AUTH (RFC 7296 sections 2.15, 3.6-3.8; RFC 7427).

``CertAuth`` holds one connection's credentials: our certificate (plus intermediates to send),
its private key, and the CA certificates we trust for the peer.  It

* signs the AUTH octets: RFC 7427 "Digital Signature" (method 14) when the peer announced
  SIGNATURE_HASH_ALGORITHMS, else the classic methods (1: RSA PKCS#1 v1.5 with SHA-1; 9/10/11:
  ECDSA P-256/384/521 with SHA-256/384/512, ``r | s``);
* verifies the peer's AUTH with the public key of its certificate: methods 1, 9, 10, 11 and 14
  with RSA PKCS#1 v1.5, RSASSA-PSS (parameters read from the AlgorithmIdentifier) and ECDSA;
* verifies the peer's chain against the configured CAs with pyca/cryptography: each link's
  signature and issuer name, validity at the (injectable) wall-clock time, basicConstraints CA
  and keyCertSign on issuers, digitalSignature on the end entity when keyUsage is present;
* says which identities a certificate vouches for: its subject DN (ID_DER_ASN1_DN) and its
  subjectAltName DNS names (ID_FQDN), IP addresses (ID_IPV4/6_ADDR) and e-mail (ID_RFC822_ADDR).

CERT payloads use encoding 4 (X.509 Certificate - Signature, DER); CERTREQ payloads carry the
SHA-1 hashes of our CAs' SubjectPublicKeyInfo.  Keys are never logged or repr'd.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ipsecemu.base.errors import ProtocolError

from .consts import AuthMethod, IdType
from .errors import LocalProtocolError

CERT_X509_SIGNATURE = 4  # CERT / CERTREQ encoding (RFC 7296 section 3.6)
#: SIGNATURE_HASH_ALGORITHMS values (RFC 7427 section 7) -> hash
Hash = type[hashes.HashAlgorithm]  # a concrete hash class (SHA1 ... SHA512)
HASH_IDS: dict[int, Hash] = {1: hashes.SHA1, 2: hashes.SHA256, 3: hashes.SHA384, 4: hashes.SHA512}
OUR_HASHES = (2, 3, 4)  # what we announce: SHA-1 is not offered for new signatures

_OID_HASH: dict[str, Hash] = {
    "1.3.14.3.2.26": hashes.SHA1, "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384, "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
_HASH_OID = {v.name: k for k, v in _OID_HASH.items()}
_RSA_PKCS1: dict[str, Hash] = {"1.2.840.113549.1.1.5": hashes.SHA1, "1.2.840.113549.1.1.11": hashes.SHA256,
              "1.2.840.113549.1.1.12": hashes.SHA384, "1.2.840.113549.1.1.13": hashes.SHA512}
_ECDSA: dict[str, Hash] = {"1.2.840.10045.4.1": hashes.SHA1, "1.2.840.10045.4.3.2": hashes.SHA256, "1.2.840.10045.4.3.3": hashes.SHA384,
          "1.2.840.10045.4.3.4": hashes.SHA512}
_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
#: classic ECDSA methods (RFC 4754): method -> (curve, hash)
_CLASSIC_ECDSA: dict[int, tuple[str, Hash]] = {9: ("secp256r1", hashes.SHA256), 10: ("secp384r1", hashes.SHA384),
                  11: ("secp521r1", hashes.SHA512)}
#: curve size -> the hash an ECDSA signature uses (SHA-512 for larger curves)
_EC_SIGN_HASH: dict[int, Hash] = {256: hashes.SHA256, 384: hashes.SHA384}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class CertError(ProtocolError):
    """The peer's certificate or signature is not acceptable (answered with AUTHENTICATION_FAILED)."""


# --- a minimal DER reader / writer (AlgorithmIdentifiers, DNs) -------------------------------------


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: (tag, value, position after it).  Raises CertError on bad DER."""
    try:
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n & 0x80:
            k = n & 0x7F
            if not 1 <= k <= 3:
                raise CertError("DER length too long")
            n = int.from_bytes(data[pos : pos + k], "big")
            pos += k
        if pos + n > len(data):
            raise CertError("DER value truncated")
        return tag, data[pos : pos + n], pos + n
    except IndexError:
        raise CertError("DER truncated") from None


def _items(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        tag, val, pos = _read(data, pos)
        out.append((tag, val))
    return out


def _oid_str(val: bytes) -> str:
    if not val:
        raise CertError("empty OID")
    parts = [val[0] // 40, val[0] % 40]
    n = 0
    for b in val[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def _alg_id(oid: str, params: bytes | None = b"\x05\x00") -> bytes:
    return _tlv(0x30, _oid(oid) + (params or b""))


def _pss_params(h: type[hashes.HashAlgorithm]) -> bytes:
    """RSASSA-PSS-params: hash h, MGF1 with h, salt length = hash length (RFC 4055)."""
    hid = _alg_id(_HASH_OID[h.name])
    return _tlv(0x30, _tlv(0xA0, hid) + _tlv(0xA1, _alg_id(_MGF1, hid)) + _tlv(0xA2, _tlv(0x02, bytes([h().digest_size]))))


def dn_to_str(der: bytes) -> str:
    """A DER Name as "CN=x, O=y" (strongSwan's order: as encoded); hex if it does not parse."""
    names = {"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
             "1.2.840.113549.1.9.1": "E", "2.5.4.5": "serialNumber"}
    try:
        tag, seq, _ = _read(der)
        if tag != 0x30:
            raise CertError("not a SEQUENCE")
        parts = []
        for _t, rdn in _items(seq):
            for _t2, atv in _items(rdn):
                (_, oid), (_, val) = _items(atv)[:2]
                o = _oid_str(oid)
                parts.append(f"{names.get(o, o)}={val.decode('utf-8', 'replace')}")
        return ", ".join(parts)
    except (CertError, ValueError):
        return der.hex()


# --- signatures ----------------------------------------------------------------------------------


def _classic_method(key: PrivateKey | PublicKey) -> int:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return AuthMethod.RSA
    for method, (curve, _h) in _CLASSIC_ECDSA.items():
        if key.curve.name == curve:
            return method
    raise LocalProtocolError(f"no classic IKE auth method for curve {key.curve.name}")


def sign(key: PrivateKey, octets: bytes, peer_hashes: frozenset[int], *, rsa_pss: bool = False) -> tuple[int, bytes]:
    """(auth method, AUTH data) over ``octets``; RFC 7427 when the peer announced hashes."""
    want: Hash
    if isinstance(key, ec.EllipticCurvePrivateKey):
        want = _EC_SIGN_HASH.get(key.curve.key_size, hashes.SHA512)
    else:
        want = hashes.SHA256
    ids = {v.name: k for k, v in HASH_IDS.items()}
    if peer_hashes and ids[want.name] not in peer_hashes:
        # the peer cannot do our preferred hash: take the strongest it can
        usable = sorted(h for h in peer_hashes if h in HASH_IDS and h != 1) or sorted(peer_hashes & {1})
        want = HASH_IDS[usable[-1]] if usable else want
    if not peer_hashes:
        method = _classic_method(key)
        if isinstance(key, rsa.RSAPrivateKey):  # method is AuthMethod.RSA
            return method, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
        _curve, h = _CLASSIC_ECDSA[method]
        r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(h())))
        size = (key.curve.key_size + 7) // 8
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        oid = {v.name: k for k, v in _ECDSA.items()}[want.name]
        alg, sig = _alg_id(oid, None), key.sign(octets, ec.ECDSA(want()))
    elif rsa_pss:
        alg = _alg_id(_PSS, _pss_params(want))
        sig = key.sign(octets, padding.PSS(padding.MGF1(want()), want().digest_size), want())
    else:
        oid = {v.name: k for k, v in _RSA_PKCS1.items()}[want.name]
        alg, sig = _alg_id(oid), key.sign(octets, padding.PKCS1v15(), want())
    return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + sig


def _parse_pss(params: bytes) -> tuple[type[hashes.HashAlgorithm], type[hashes.HashAlgorithm], int]:
    h: Hash = hashes.SHA1  # RFC 4055 defaults
    mgf_h: Hash = hashes.SHA1
    salt = 20
    for tag, val in _items(params):
        if tag == 0xA0:
            h = _OID_HASH.get(_oid_str(_items(_items(val)[0][1])[0][1]), None) or _unsupported("PSS hash")
        elif tag == 0xA1:
            _t, seq = _items(val)[0]
            (_, mgf_oid), (_, mgf_par) = _items(seq)[:2]
            if _oid_str(mgf_oid) != _MGF1:
                raise CertError("PSS mask generation function is not MGF1")
            mgf_h = _OID_HASH.get(_oid_str(_items(mgf_par)[0][1])) or _unsupported("MGF1 hash")
        elif tag == 0xA2:
            salt = int.from_bytes(_items(val)[0][1], "big")
    return h, mgf_h, salt


def _unsupported(what: str) -> type[hashes.HashAlgorithm]:
    raise CertError(f"unsupported {what}")


def verify(pub: CertificatePublicKeyTypes, method: int, data: bytes, octets: bytes,
           peer_hashes_ok: frozenset[int]) -> None:
    """Check AUTH ``data`` of ``method`` over ``octets`` with ``pub``; raise CertError if it fails
    (also for a key that is neither RSA nor ECDSA: no method fits it)."""
    try:
        if method == AuthMethod.RSA and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(data, octets, padding.PKCS1v15(), hashes.SHA1())
            return
        if method in _CLASSIC_ECDSA and isinstance(pub, ec.EllipticCurvePublicKey):
            curve, h = _CLASSIC_ECDSA[method]
            size = (pub.curve.key_size + 7) // 8
            if pub.curve.name != curve or len(data) != 2 * size:
                raise CertError("ECDSA signature does not match the key's curve")
            der = encode_dss_signature(int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big"))
            pub.verify(der, octets, ec.ECDSA(h()))
            return
        if method != AuthMethod.DIGITAL_SIGNATURE:
            raise CertError(f"auth method {method} does not fit the certificate's key")
        if not data or len(data) < 1 + data[0]:
            raise CertError("malformed RFC 7427 AUTH data")
        alg, sig = data[1 : 1 + data[0]], data[1 + data[0] :]
        tag, seq, _ = _read(alg)
        parts = _items(seq)
        if tag != 0x30 or not parts or parts[0][0] != 0x06:
            raise CertError("malformed AlgorithmIdentifier")
        oid = _oid_str(parts[0][1])
        if oid in _ECDSA and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, octets, ec.ECDSA(_ECDSA[oid]()))
        elif oid in _RSA_PKCS1 and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, octets, padding.PKCS1v15(), _RSA_PKCS1[oid]())
        elif oid == _PSS and isinstance(pub, rsa.RSAPublicKey) and len(parts) > 1:
            h, mgf_h, salt = _parse_pss(parts[1][1])
            pub.verify(sig, octets, padding.PSS(padding.MGF1(mgf_h()), salt), h())
        else:
            raise CertError(f"signature algorithm {oid} does not fit the certificate's key")
    except (InvalidSignature, ValueError, UnsupportedAlgorithm, IndexError):
        raise CertError("signature check failed") from None


# --- credentials and chain validation --------------------------------------------------------------


def _load_pem_certs(path: str | Path) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LocalProtocolError(f"certificate file {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise LocalProtocolError(f"certificate file {path}: not a PEM or DER X.509 certificate") from None


def _load_key(path: str | Path) -> PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LocalProtocolError(f"key file {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, None)
        else:
            key = serialization.load_der_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # never echo the file's content: it is a secret
        raise LocalProtocolError(f"key file {path}: not an unencrypted PEM/DER private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise LocalProtocolError(f"key file {path}: only RSA and ECDSA keys are supported")
    return key


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ku(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass
class CertAuth:
    """One side's certificate credentials (see the module docstring)."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    cas: list[x509.Certificate]
    chain: list[x509.Certificate] = field(default_factory=list)  # intermediates we send
    rsa_pss: bool = False  # sign RFC 7427 RSA with PSS instead of PKCS#1 v1.5
    clock: Callable[[], datetime.datetime] = _utcnow  # wall clock for validity checks
    rfc7427: bool = True  # announce SIGNATURE_HASH_ALGORITHMS; False: classic methods 1/9/10/11 only

    @classmethod
    def load(cls, cert: str | Path, key: str | Path, ca: str | Path | None, *, rsa_pss: bool = False) -> CertAuth:
        certs = _load_pem_certs(cert)
        auth = cls(certs[0], _load_key(key), _load_pem_certs(ca) if ca else [], certs[1:], rsa_pss)
        pub = auth.cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) or \
                pub.public_numbers() != auth.key.public_key().public_numbers():
            raise LocalProtocolError(f"key file {key} does not belong to certificate {cert}")
        return auth

    def __repr__(self) -> str:
        return f"CertAuth({self.cert.subject.rfc4514_string()!r}, key=<redacted>)"

    @property
    def dn(self) -> bytes:
        return self.cert.subject.public_bytes()

    def cert_payload_data(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.cert, *self.chain)]

    def certreq_data(self) -> bytes:
        """SHA-1 of each trusted CA's SubjectPublicKeyInfo, concatenated (RFC 7296 section 3.7)."""
        return b"".join(hashlib.sha1(c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest() for c in self.cas)

    def sign(self, octets: bytes, peer_hashes: frozenset[int]) -> tuple[int, bytes]:
        return sign(self.key, octets, peer_hashes if self.rfc7427 else frozenset(), rsa_pss=self.rsa_pss)

    def verify_chain(self, ders: list[bytes]) -> x509.Certificate:
        """The peer's end-entity certificate (first) and intermediates, checked up to one of our CAs."""
        if not self.cas:
            raise CertError("no CA configured to check the peer's certificate")
        try:
            chain = [x509.load_der_x509_certificate(d) for d in ders]
        except ValueError:
            raise CertError("peer certificate does not parse") from None
        if not chain:
            raise CertError("peer sent no certificate")
        now = self.clock()
        ee = chain[0]
        ku = _ku(ee)
        if ku is not None and not ku.digital_signature:
            raise CertError("peer certificate's keyUsage lacks digitalSignature")
        cur, pool = ee, chain[1:]
        for _depth in range(8):
            if not cur.not_valid_before_utc <= now <= cur.not_valid_after_utc:
                raise CertError(f"certificate {cur.subject.rfc4514_string()} is expired or not yet valid")
            for ca in self.cas:
                if ca.subject == cur.issuer and self._signed_by(cur, ca):
                    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                        raise CertError("CA certificate is expired or not yet valid")
                    return ee
            nxt = next((c for c in pool if c.subject == cur.issuer and _is_ca(c) and self._signed_by(cur, c)), None)
            if nxt is None:
                raise CertError(f"certificate {cur.subject.rfc4514_string()} is not issued by a trusted CA")
            pool.remove(nxt)
            cur = nxt
        raise CertError("certificate chain too long")

    @staticmethod
    def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        ku = _ku(issuer)
        if not _is_ca(issuer) or (ku is not None and not ku.key_cert_sign):
            return False
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            return False


def cert_identities(cert: x509.Certificate) -> set[tuple[int, bytes]]:
    """(ID type, ID data) pairs the certificate vouches for: subject DN and subjectAltNames."""
    out = {(int(IdType.DER_ASN1_DN), cert.subject.public_bytes())}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return out
    for name in san.get_values_for_type(x509.DNSName):
        out.add((int(IdType.FQDN), name.encode()))
    for name in san.get_values_for_type(x509.RFC822Name):
        out.add((int(IdType.RFC822_ADDR), name.encode()))
    for ip in san.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            out.add((int(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR), ip.packed))
    return out
