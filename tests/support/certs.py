"""Throw-away X.509 CAs, certificates and IKE certificate credentials for tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ipsecemu.ike import certs as c

NOW = datetime.datetime.now(datetime.UTC)


DAY = datetime.timedelta(days=1)


def new_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsecemu test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "ipsecemu test CA", kind: str = "p256", *, not_after: datetime.datetime | None = None):
    key = new_key(kind)
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - DAY)
            .not_valid_after(not_after or NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_cert(ca: tuple, cn: str, kind: str, sans: tuple[str, ...] = (), *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, digital_signature: bool = True):
    ca_cert, ca_key = ca
    key = new_key(kind)
    alt: list[x509.GeneralName] = []
    for s in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            alt.append(x509.RFC822Name(s) if "@" in s else x509.DNSName(s))
    b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(not_before or NOW - DAY)
         .not_valid_after(not_after or NOW + 30 * DAY)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature, False, True, False, False, False, False, False, False),
                        critical=True))
    if alt:
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


@dataclass
class Files:
    cert: Path
    key: Path
    ca: Path


def write(tmp: Path, tag: str, cert_key: tuple, ca_cert: x509.Certificate) -> Files:
    cert, key = cert_key
    f = Files(tmp / f"{tag}.crt", tmp / f"{tag}.key", tmp / f"{tag}-ca.crt")
    f.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    f.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    f.key.chmod(0o600)
    f.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return f


def creds(cert_key: tuple, ca_cert: x509.Certificate, **kw: object) -> c.CertAuth:
    return c.CertAuth(cert_key[0], cert_key[1], [ca_cert], **kw)  # type: ignore[arg-type]
