"""X.509 certificate authentication between two in-process peers (RFC 7296 section 2.15, RFC 7427).

Certificates are made here with pyca/cryptography's builder into a tmp dir (no key is committed).
Checked: RSA (PKCS#1 v1.5 and PSS) and ECDSA P-256/P-384 both ways, RFC 7427 and the classic
methods, ID from the certificate (DN and SAN), and refusals: wrong CA, expired, ID not in the
certificate, method mismatch -- each ending in AUTHENTICATION_FAILED, never in an exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ipsecemu.config.connection import ConnectionConfigError, parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.ike import certs as c
from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import AuthMethod, Exchange, IdType, Notify, Payload
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.settings import Identity, IkeSaConfig
from ipsecemu.ike.states import IkeState

from support.certs import DAY, NOW, creds, make_ca, make_cert, name, new_key, write
from support.ike_pair import A, B, esp_both_ways, events, one, seeded


def cert_pair(auth_a: c.CertAuth, auth_b: c.CertAuth, ids: tuple[str, str] = ("left.example", "right.example"),
              remote_ids: tuple[str | None, str | None] | None = None, ike: str = "aes256-sha256-ecp256",
              ) -> tuple[IkeEndpoint, IkeEndpoint, LoopbackNet]:
    rid = remote_ids if remote_ids is not None else (ids[1], ids[0])
    ca = IkeSaConfig.simple("c", b"", ids[0], rid[0], ike=ike, local_ts="10.1.0.0/16", remote_ts="10.2.0.0/16",
                            remote_addr=B, certs=auth_a)
    cb = IkeSaConfig.simple("c", b"", ids[1], rid[1], ike=ike, local_ts="10.2.0.0/16", remote_ts="10.1.0.0/16",
                            certs=auth_b)
    a = IkeEndpoint([ca], A, rng=seeded(1))
    b = IkeEndpoint([cb], B, rng=seeded(2))
    return a, b, LoopbackNet([a, b])


@pytest.fixture(scope="module")
def pki():
    ca = make_ca()
    out = {"ca": ca}
    for kind in ("rsa", "p256", "p384"):
        out[f"left-{kind}"] = make_cert(ca, "left", kind, ("left.example", "192.0.2.1"))
        out[f"right-{kind}"] = make_cert(ca, "right", kind, ("right.example",))
    return out


# --- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind_a,kind_b", [("rsa", "rsa"), ("p256", "p256"), ("p384", "rsa"), ("rsa", "p384")])
def test_cert_auth_establishes_and_keys_work(pki, kind_a: str, kind_b: str) -> None:
    ca_cert = pki["ca"][0]
    a, b, net = cert_pair(creds(pki[f"left-{kind_a}"], ca_cert), creds(pki[f"right-{kind_b}"], ca_cert))
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, (sa.last_error, b.sas and list(b.sas.values())[0].last_error)
    ea, eb = events(a), events(b)
    assert one(ea, ev.IkeSaEstablished).remote_id == "right.example"
    assert one(eb, ev.IkeSaEstablished).remote_id == "left.example"
    esp_both_ways(one(ea, ev.ChildSaEstablished).keys, one(eb, ev.ChildSaEstablished).keys)
    # both announced RFC 7427 hashes, so both signed with method 14
    assert sa.peer_sig_hashes == frozenset(c.OUR_HASHES)


def test_dn_identity_from_certificate_and_pss(pki) -> None:
    """IDs are the subject DNs (ID_DER_ASN1_DN), configured in strongSwan's "C=.., O=.., CN=.." form;
    RSA signs with RSASSA-PSS."""
    ca_cert = pki["ca"][0]
    dn_l, dn_r = "C=CH, O=ipsecemu test, CN=left", "C=CH, O=ipsecemu test, CN=right"
    assert Identity.parse(dn_l).data == pki["left-rsa"][0].subject.public_bytes()
    a, b, net = cert_pair(creds(pki["left-rsa"], ca_cert, rsa_pss=True), creds(pki["right-p256"], ca_cert),
                          ids=(dn_l, dn_r))
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error
    assert one(events(b), ev.IkeSaEstablished).remote_id == dn_l
    assert sa.remote_id == Identity(IdType.DER_ASN1_DN, pki["right-p256"][0].subject.public_bytes())


def _refused(a: IkeEndpoint, b: IkeEndpoint, net: LoopbackNet) -> tuple[list, list]:
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state != IkeState.ESTABLISHED
    ea, eb = events(a), events(b)
    assert not any(isinstance(e, ev.ChildSaEstablished) for e in ea + eb)
    return ea, eb


def test_wrong_ca_is_authentication_failed(pki) -> None:
    other_ca = make_ca("some other CA")
    ca_cert = pki["ca"][0]
    # b trusts only another CA: it refuses a's certificate
    a, b, net = cert_pair(creds(pki["left-p256"], ca_cert), creds(pki["right-p256"], other_ca[0]))
    ea, eb = _refused(a, b, net)
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED
    gone = one(eb, ev.IkeSaDeleted)
    # the responder's event says it was the certificate (not a PSK or an identity), with the core's text
    assert gone.reason == "auth_failed" and gone.detail.startswith("certificate: ") and not gone.initiator
    assert gone.conn == "c" and gone.peer[0] == "192.0.2.1"


def test_initiator_refuses_responder_from_wrong_ca(pki) -> None:
    other_ca = make_ca("some other CA")
    a, b, net = cert_pair(creds(pki["left-p256"], other_ca[0]), creds(pki["right-p256"], pki["ca"][0]))
    sa = a.initiate("c", net.now)
    net.run()
    ea, eb = events(a), events(b)
    assert sa.state == IkeState.CLOSED and one(ea, ev.IkeSaDeleted).reason == "auth_failed"
    assert not any(isinstance(e, ev.ChildSaEstablished) for e in ea)
    # the responder had installed its side; the initiator's AUTHENTICATION_FAILED notify removes it
    assert one(eb, ev.ChildSaDeleted).reason == "auth_failed"
    assert one(eb, ev.IkeSaDeleted).reason == "auth_failed" and not b.sas


@pytest.mark.parametrize("when", ["expired", "not_yet_valid"])
def test_expired_certificate_is_rejected(pki, when: str) -> None:
    kw = {"not_after": NOW - DAY / 2} if when == "expired" else {"not_before": NOW + DAY}
    bad = make_cert(pki["ca"], "left", "p256", ("left.example",), **kw)  # type: ignore[arg-type]
    a, b, net = cert_pair(creds(bad, pki["ca"][0]), creds(pki["right-p256"], pki["ca"][0]))
    ea, eb = _refused(a, b, net)
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED
    assert one(eb, ev.IkeSaDeleted).reason == "auth_failed"


def test_injected_clock_makes_a_certificate_expire(pki) -> None:
    later = creds(pki["right-p256"], pki["ca"][0], clock=lambda: NOW + 60 * DAY)
    a, b, net = cert_pair(creds(pki["left-p256"], pki["ca"][0]), later)
    ea, _ = _refused(a, b, net)
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED


def test_identity_not_in_certificate_is_refused(pki) -> None:
    # a's certificate vouches for left.example, but the responder expects someone else
    a, b, net = cert_pair(creds(pki["left-p256"], pki["ca"][0]), creds(pki["right-p256"], pki["ca"][0]),
                          remote_ids=("right.example", "mallory.example"))
    ea, _ = _refused(a, b, net)
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED


def test_local_identity_must_be_in_our_certificate(pki) -> None:
    with pytest.raises(LocalProtocolError, match="neither the subject nor a subjectAltName"):
        IkeSaConfig.simple("c", b"", "other.example", None, certs=creds(pki["left-p256"], pki["ca"][0]))


def test_certificate_without_digital_signature_usage_is_refused(pki) -> None:
    bad = make_cert(pki["ca"], "left", "p256", ("left.example",), digital_signature=False)
    a, b, net = cert_pair(creds(bad, pki["ca"][0]), creds(pki["right-p256"], pki["ca"][0]))
    ea, _ = _refused(a, b, net)
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED


def test_psk_peer_against_cert_peer_fails_cleanly(pki) -> None:
    ca = IkeSaConfig.simple("c", b"s3cret", "left.example", "right.example", ike="aes256-sha256-ecp256",
                            remote_addr=B)
    cb = IkeSaConfig.simple("c", b"", "right.example", "left.example", ike="aes256-sha256-ecp256",
                            certs=creds(pki["right-p256"], pki["ca"][0]))
    a, b = IkeEndpoint([ca], A, rng=seeded(1)), IkeEndpoint([cb], B, rng=seeded(2))
    ea, eb = _refused(a, b, LoopbackNet([a, b]))
    assert one(ea, ev.IkeSaDeleted).notify == Notify.AUTHENTICATION_FAILED


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384"])
@pytest.mark.parametrize("hashes_", [frozenset(), frozenset({2, 3, 4}), frozenset({1}), frozenset({4})])
def test_sign_verify_round_trip_each_method(pki, kind: str, hashes_: frozenset[int]) -> None:
    """Classic methods (no hashes announced) and RFC 7427 with whatever hash the peer offers; a flipped
    octet fails the check."""
    cert, key = pki[f"left-{kind}"]
    method, data = c.sign(key, b"signed octets", hashes_)
    if not hashes_:
        assert method == {"rsa": AuthMethod.RSA, "p256": 9, "p384": 10}[kind]
    else:
        assert method == AuthMethod.DIGITAL_SIGNATURE
    c.verify(cert.public_key(), method, data, b"signed octets", frozenset())
    with pytest.raises(c.CertError):
        c.verify(cert.public_key(), method, data, b"signed octetS", frozenset())
    with pytest.raises(c.CertError):
        c.verify(cert.public_key(), method, data[:-3], b"signed octets", frozenset())


def test_rfc7427_pss_algorithm_identifier_is_read(pki) -> None:
    cert, key = pki["left-rsa"]
    method, data = c.sign(key, b"x", frozenset({3}), rsa_pss=True)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    alg = data[1 : 1 + data[0]]
    # the AlgorithmIdentifier is RSASSA-PSS (1.2.840.113549.1.1.10) and names SHA-384
    assert bytes.fromhex("06092a864886f70d01010a") in alg and bytes.fromhex("0609608648016503040202") in alg
    c.verify(cert.public_key(), method, data, b"x", frozenset())


@pytest.mark.parametrize("junk", [b"", b"\x00", b"\x05\x30\x03\x06\x01", b"\xff" + b"\x30" * 10, b"\x0d" + bytes(40)])
def test_malformed_rfc7427_auth_data_is_a_cert_error(pki, junk: bytes) -> None:
    with pytest.raises(c.CertError):
        c.verify(pki["left-rsa"][0].public_key(), AuthMethod.DIGITAL_SIGNATURE, junk, b"x", frozenset())


def test_ike_auth_carries_cert_and_certreq(pki) -> None:
    """On the wire: CERTREQ (SHA-1 of the CA's SubjectPublicKeyInfo) in the IKE_SA_INIT response,
    CERT (encoding 4, our DER certificate) and AUTH method 14 in IKE_AUTH."""
    ca_cert = pki["ca"][0]
    a, b, net = cert_pair(creds(pki["left-p256"], ca_cert), creds(pki["right-p256"], ca_cert))
    sa = a.initiate("c", net.now)
    wire: list[bytes] = []
    for _ in range(4):
        for ep in (a, b):
            for data, _dst, _src in ep.datagrams_to_send(net.now):
                wire.append(data)
                (b if ep is a else a).receive_datagram(data, A if ep is a else B, net.now, B if ep is a else A)
    assert sa.state == IkeState.ESTABLISHED
    init_resp = m.decode_message(wire[1])
    certreq = init_resp.first(m.Cert, Payload.CERTREQ)
    spki = ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib

    assert certreq.encoding == 4 and certreq.data == hashlib.sha1(spki).digest()
    assert init_resp.notify(Notify.SIGNATURE_HASH_ALGORITHMS).data == bytes.fromhex("000200030004")
    auth_req = m.decode_header(wire[2])
    assert auth_req.exchange == Exchange.IKE_AUTH
    auth_req.payloads = m.decode_payloads(wire[2][16], wire[2][28:])
    inner = m.decrypt(auth_req, wire[2], b.sas[next(iter(b.sas))]._cin)
    msg = m.Message(b"", b"", 0, 0, True, False, inner)
    assert msg.first(m.Cert, Payload.CERT).data == pki["left-p256"][0].public_bytes(serialization.Encoding.DER)
    assert msg.first(m.Auth).method == AuthMethod.DIGITAL_SIGNATURE


def test_yaml_cert_config_builds_a_working_core_config(pki, tmp_path: Path) -> None:
    ca_cert = pki["ca"][0]
    fa = write(tmp_path, "left", pki["left-rsa"], ca_cert)
    fb = write(tmp_path, "right", pki["right-p256"], ca_cert)
    left = to_ike_sa_config(parse_connection({
        "name": "c", "remote_address": B[0], "local_id": "left.example", "remote_id": "C=CH, O=ipsecemu test, CN=right",
        "local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16", "ike": "aes256-sha256-ecp256",
        "auth": {"method": "cert", "cert": str(fa.cert), "key": str(fa.key), "ca": str(fa.ca)}}))
    right = to_ike_sa_config(parse_connection({
        "name": "c", "remote_address": A[0], "local_ts": "10.2.0.0/16", "remote_ts": "10.1.0.0/16",
        "ike": "aes256-sha256-ecp256",
        "auth": {"method": "cert", "cert": str(fb.cert), "key": str(fb.key), "ca": str(fb.ca)}}))
    # no local_id: the subject DN of the certificate, as strongSwan does
    assert right.local_id == Identity(IdType.DER_ASN1_DN, pki["right-p256"][0].subject.public_bytes())
    a, b = IkeEndpoint([left], A, rng=seeded(1)), IkeEndpoint([right], B, rng=seeded(2))
    net = LoopbackNet([a, b])
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error
    assert "key=<redacted>" in repr(left.certs) and "PRIVATE" not in repr(left)


def test_yaml_cert_config_errors_name_the_problem(pki, tmp_path: Path) -> None:
    fa = write(tmp_path, "left", pki["left-rsa"], pki["ca"][0])
    base = {"remote_address": "1.2.3.4", "local_id": "left.example"}
    for auth, msg in [
        ({"cert": str(fa.cert), "key": str(fa.key)}, "needs ca"),
        ({"cert": str(tmp_path / "nope.crt"), "key": str(fa.key), "ca": str(fa.ca)}, "nope.crt"),
        ({"cert": str(fa.cert), "key": str(fa.cert), "ca": str(fa.ca)}, "not an unencrypted PEM/DER private key"),
        ({"cert": str(fa.key), "key": str(fa.key), "ca": str(fa.ca)}, "not a PEM or DER X.509 certificate"),
        ({"cert": str(fa.cert), "key": str(write(tmp_path, "r", pki["right-rsa"], pki["ca"][0]).key),
          "ca": str(fa.ca)}, "does not belong to certificate"),
    ]:
        conn = parse_connection({**base, "auth": {"method": "cert", **auth}})
        with pytest.raises(ConnectionConfigError, match=msg) as ei:
            to_ike_sa_config(conn)
        assert "PRIVATE KEY" not in str(ei.value)
    conn = parse_connection({**base, "local_id": "someone.else", "auth": {"method": "cert", "cert": str(fa.cert),
                                                                          "key": str(fa.key), "ca": str(fa.ca)}})
    with pytest.raises(ConnectionConfigError, match="neither the subject"):
        to_ike_sa_config(conn)


def test_intermediate_ca_chain(pki) -> None:
    """The peer sends its certificate plus an intermediate; we trust only the root."""
    root = pki["ca"]
    inter_key = new_key("p256")
    inter = (x509.CertificateBuilder().subject_name(name("intermediate")).issuer_name(root[0].subject)
             .public_key(inter_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(root[1], hashes.SHA256()))
    leaf = make_cert((inter, inter_key), "left", "p256", ("left.example",))
    auth_a = c.CertAuth(leaf[0], leaf[1], [root[0]], [inter])
    a, b, net = cert_pair(auth_a, creds(pki["right-p256"], root[0]))
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error
    # without the intermediate the chain cannot be built
    auth_a2 = c.CertAuth(leaf[0], leaf[1], [root[0]])
    a, b, net = cert_pair(auth_a2, creds(pki["right-p256"], root[0]))
    _refused(a, b, net)


@pytest.mark.parametrize("ders", [[], [b""], [b"\x30\x03\x02\x01\x00"], [bytes(300)]])
def test_junk_peer_certificates_are_cert_errors(pki, ders: list[bytes]) -> None:
    with pytest.raises(c.CertError):
        creds(pki["right-p256"], pki["ca"][0]).verify_chain(ders)


def test_ca_certificate_as_end_entity_with_wrong_issuer_is_refused(pki) -> None:
    """A certificate whose issuer name matches our CA but which another key signed is refused."""
    impostor_ca = make_ca()  # same subject name as the real CA, different key
    bad = make_cert(impostor_ca, "left", "p256", ("left.example",))
    with pytest.raises(c.CertError, match="not issued by a trusted CA"):
        creds(pki["right-p256"], pki["ca"][0]).verify_chain([bad[0].public_bytes(serialization.Encoding.DER)])


def test_dn_strings_round_trip() -> None:
    ident = Identity.parse("C=CH, O=ipsecemu test, CN=left")
    assert ident.id_type == IdType.DER_ASN1_DN and str(ident) == "C=CH, O=ipsecemu test, CN=left"
    assert Identity.parse("dn:CN=a\\, b").data == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a, b")]).public_bytes()
    with pytest.raises(LocalProtocolError):
        Identity.parse("dn:XX=1")
    assert c.dn_to_str(b"\x30\x05junk") == b"\x30\x05junk".hex()


def test_responder_picks_the_config_for_the_peer_dn(pki) -> None:
    """Two responder configs told apart by the peer's DN (given as text, matched against the DER
    the peer sends)."""
    ca_cert = pki["ca"][0]
    mk = IkeSaConfig.simple
    right = creds(pki["right-p256"], ca_cert)
    other = mk("other", b"", "right.example", "C=CH, O=ipsecemu test, CN=someone", ike="aes256-sha256-ecp256",
               local_ts="10.9.0.0/16", remote_ts="10.8.0.0/16", certs=right)
    good = mk("good", b"", "right.example", "C=CH, O=ipsecemu test, CN=left", ike="aes256-sha256-ecp256",
              local_ts="10.2.0.0/16", remote_ts="10.1.0.0/16", certs=right)
    ca_ = mk("c", b"", "C=CH, O=ipsecemu test, CN=left", "right.example", ike="aes256-sha256-ecp256",
             local_ts="10.1.0.0/16", remote_ts="10.2.0.0/16", remote_addr=B, certs=creds(pki["left-p256"], ca_cert))
    a, b = IkeEndpoint([ca_], A, rng=seeded(1)), IkeEndpoint([other, good], B, rng=seeded(2))
    net = LoopbackNet([a, b])
    sa = a.initiate("c", net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED, sa.last_error
    (bsa,) = b.sas.values()
    assert bsa.config.name == "good"
