"""Certificate authentication (RSA and ECDSA) against a real strongSwan 5.9.8 charon, both roles.

Left gateway: ipsecemu (IkeEndpoint + asyncio transport + tun forwarder), right: charon with the
``pem pkcs1 x509 pubkey openssl`` plugins.  Certificates are made by the test (a fresh CA, one
certificate per side with subjectAltName "left"/"right") and handed to charon over vici
(``load-cert``/``load-key``/``load-conn`` with ``auth = pubkey``).  Checked through vici
(ESTABLISHED/INSTALLED, same SPIs, IDs, charon saw our certificate) and by pings through the tunnel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ipsecemu.ike import events as ev
from ipsecemu.ike.certs import CertAuth
from ipsecemu.ike.settings import Identity
from ipsecemu.interop.pair import PSK, ours_vs_charon
from ipsecemu.lab.harness import pair_conn
from ipsecemu.strongswan.charon import Charon, charon_available

from support.certs import make_ca, make_cert

NO_CHARON = charon_available()

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
]

IKE = "aes256-sha256-ecp256"
ESP = "aes128gcm16"


def pem(obj: Any) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any) -> bytes:
    # the traditional formats: charon's pkcs1 (RSA) and openssl (EC) plugins read them
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def load_cert_conn(charon: Charon, topo: Any, ca: tuple, mine: tuple, kind: str, **conn_kw: Any) -> None:
    """Replace charon's PSK connection "pair" with the same one authenticated by certificates."""
    body = pair_conn(topo, 1, ike_proposal=IKE, esp_proposal=ESP, psk=PSK, **conn_kw).vici()
    conn = body["pair"]
    conn["local"] = {"auth": "pubkey", "id": "right", "certs": [pem(mine[0])]}
    conn["remote"] = {"auth": "pubkey", "id": "left", "cacerts": [pem(ca[0])]}
    charon._call("load-key", "load_key", {"type": "rsa" if kind == "rsa" else "ecdsa", "data": key_pem(mine[1])})
    charon._call("load-cert", "load_cert", {"type": "X509", "flag": "CA", "data": pem(ca[0])})
    charon._call("load-conn pair (pubkey)", "load_conn", body)


@pytest.mark.parametrize("kind", ["rsa", "p256"])
@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_cert_auth_with_charon(unique_name: str, kind: str, we_initiate: bool) -> None:
    ca = make_ca(kind="p256")
    left = make_cert(ca, "left", kind, ("left",))
    right = make_cert(ca, "right", kind, ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]])

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            load_cert_conn(s.charon, s.topo, ca, right, kind)
            ike_ev, child_ev = await s.establish(we_initiate)
            s.check_same_sa(ike_ev, child_ev)
            sa = s.charon_sa()
            assert (sa["local-id"], sa["remote-id"]) == ("right", "left")
            # charon verified our signature with the certificate we sent (it has no other copy)
            certs = await s.charon_call(lambda: s.charon._call("list-certs", "list_certs", {"type": "X509"}))
            subjects = [bytes(c.get("data", b"")) for c in certs]
            assert left[0].public_bytes(serialization.Encoding.DER) in subjects
            assert (await s.pings(2)) == (2, 2), s.charon.log_tail()
            assert not s.peer.install_errors
            # and the Child SA can be rekeyed over the certificate-authenticated IKE SA
            s.peer.call(s.peer.sa().rekey_child, child_ev.keys.inbound.spi)
            await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)

    asyncio.run(main())


def test_charon_refuses_certificate_from_unknown_ca(unique_name: str) -> None:
    """Our certificate is issued by a CA charon does not trust: charon answers AUTHENTICATION_FAILED."""
    ca, rogue_ca = make_ca(kind="p256"), make_ca("rogue CA", kind="p256")
    left = make_cert(rogue_ca, "left", "p256", ("left",))
    right = make_cert(ca, "right", "p256", ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]])

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            load_cert_conn(s.charon, s.topo, ca, right, "p256")
            s.peer.initiate("pair")
            gone = await s.peer.transport.wait_event(ev.IkeSaDeleted, 10)
            assert gone.reason == "auth_failed"
            assert not s.charon.list_sas()

    asyncio.run(main())


def test_we_refuse_charon_certificate_from_unknown_ca(unique_name: str) -> None:
    ca, rogue_ca = make_ca(kind="p256"), make_ca("rogue CA", kind="p256")
    left = make_cert(ca, "left", "p256", ("left",))
    right = make_cert(rogue_ca, "right", "p256", ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]])

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            load_cert_conn(s.charon, s.topo, ca, right, "p256")
            s.peer.initiate("pair")
            gone = await s.peer.transport.wait_event(ev.IkeSaDeleted, 10)
            assert gone.reason == "auth_failed"
            # our AUTHENTICATION_FAILED notify makes charon drop the SA it had completed
            assert await s.until(lambda: not s.charon.list_sas(), 8), s.charon.log_tail()

    asyncio.run(main())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_fragmented_ike_auth_with_charon(unique_name: str, we_initiate: bool) -> None:
    """RFC 7383 with charon: RSA certificates make IKE_AUTH ~1.5 KB; both sides send it as
    fragments of at most 600-byte datagrams and reassemble the other's."""
    ca = make_ca(kind="rsa")
    left = make_cert(ca, "left", "rsa", ("left",))
    right = make_cert(ca, "right", "rsa", ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]])

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP,
                                  ours_kw={"psk": b"", "certs": auth, "fragment_size": 600}) as s:
            # charon reads fragment_size when it creates an IKE SA: set it before one exists
            with open(s.charon.conf, "a") as f:
                f.write("charon {\n  fragment_size = 600\n}\n")
            s.charon._call("reload-settings", "reload_settings")
            load_cert_conn(s.charon, s.topo, ca, right, "rsa")
            ike_ev, child_ev = await s.establish(we_initiate)
            s.check_same_sa(ike_ev, child_ev)
            sa = s.peer.sa()
            assert sa.frag_ok
            assert sa.counters.get("fragmented") == 1 and sa.counters.get("reassembled") == 1, sa.counters
            assert (await s.pings(2)) == (2, 2), s.charon.log_tail()

    asyncio.run(main())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_dn_identities_with_charon(unique_name: str, we_initiate: bool) -> None:
    """IDs are the certificates' subject DNs (ID_DER_ASN1_DN): charon's default identity when it
    has a certificate, ours configured as "C=.., O=.., CN=.." text."""
    ca = make_ca(kind="p256")
    left = make_cert(ca, "left", "p256", ("left",))
    right = make_cert(ca, "right", "p256", ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]])
    dn_left, dn_right = "C=CH, O=ipsecemu test, CN=left", "C=CH, O=ipsecemu test, CN=right"

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            cfg = s.peer.endpoint.configs["pair"]
            cfg.local_id, cfg.remote_id = Identity.parse(dn_left), Identity.parse(dn_right)
            body = pair_conn(s.topo, 1, ike_proposal=IKE, esp_proposal=ESP, psk=PSK).vici()
            body["pair"]["local"] = {"auth": "pubkey", "certs": [pem(right[0])]}  # id: the certificate's DN
            body["pair"]["remote"] = {"auth": "pubkey", "id": dn_left, "cacerts": [pem(ca[0])]}
            s.charon._call("load-key", "load_key", {"type": "ecdsa", "data": key_pem(right[1])})
            s.charon._call("load-conn pair (DN)", "load_conn", body)
            ike_ev, _child_ev = await s.establish(we_initiate)
            assert (ike_ev.local_id, ike_ev.remote_id) == (dn_left, dn_right)
            sa = s.charon_sa()
            assert (sa["local-id"], sa["remote-id"]) == (dn_right, dn_left)
            assert (await s.pings(1)) == (1, 1)

    asyncio.run(main())


def test_rsa_pss_both_ways_with_charon(unique_name: str) -> None:
    """RFC 7427 RSASSA-PSS: we sign with PSS (charon verifies), charon signs with PSS
    (``charon.rsa_pss = yes``; we read the PSS parameters from its AlgorithmIdentifier)."""
    ca = make_ca(kind="p256")
    left = make_cert(ca, "left", "rsa", ("left",))
    right = make_cert(ca, "right", "rsa", ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]], rsa_pss=True)

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            with open(s.charon.conf, "a") as f:  # charon signs with PSS only when told so globally
                f.write("charon {\n  rsa_pss = yes\n}\n")
            s.charon._call("reload-settings", "reload_settings")
            body = pair_conn(s.topo, 1, ike_proposal=IKE, esp_proposal=ESP, psk=PSK).vici()
            body["pair"]["local"] = {"auth": "pubkey", "id": "right", "certs": [pem(right[0])]}
            body["pair"]["remote"] = {"auth": "pubkey", "id": "left", "cacerts": [pem(ca[0])]}
            s.charon._call("load-key", "load_key", {"type": "rsa", "data": key_pem(right[1])})
            s.charon._call("load-conn pair (PSS)", "load_conn", body)
            await s.establish(True)
            assert (await s.pings(1)) == (1, 1)
            log = s.charon.log_file.read_text()
            # charon's own words: it verified our PSS signature and made one itself
            auth_lines = [ln for ln in log.splitlines() if "authentication of" in ln]
            assert len([ln for ln in auth_lines if "RSA_EMSA_PSS" in ln and "successful" in ln]) == 2, auth_lines

    asyncio.run(main())


@pytest.mark.parametrize("kind,scheme", [("rsa", "with RSA signature"), ("p256", "with ECDSA-256 signature")])
def test_classic_signature_methods_with_charon(unique_name: str, kind: str, scheme: str) -> None:
    """Without SIGNATURE_HASH_ALGORITHMS both sides fall back to RFC 7296's methods: RSA (1) with
    SHA-1, ECDSA P-256 (9) with SHA-256; each verifies the other's."""
    ca = make_ca(kind="p256")
    left = make_cert(ca, "left", kind, ("left",))
    right = make_cert(ca, "right", kind, ("right",))
    auth = CertAuth(left[0], left[1], [ca[0]], rfc7427=False)

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, ESP, ours_kw={"psk": b"", "certs": auth}) as s:
            load_cert_conn(s.charon, s.topo, ca, right, kind)
            await s.establish(False)
            assert (await s.pings(1)) == (1, 1)
            log = s.charon.log_file.read_text()
            auth_lines = [ln for ln in log.splitlines() if "authentication of" in ln and "successful" in ln]
            assert len(auth_lines) == 2 and all(scheme in ln for ln in auth_lines), auth_lines

    asyncio.run(main())
