"""IKEv2 crypto against published vectors (tests/vectors)."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import dh

from ipsecemu.ike import crypto
from ipsecemu.ike.crypto import KeyExchange, SkCipher, derive_ike_keys, prf, prf_plus, skeyseed
from ipsecemu.ike.errors import IntegrityError, RemoteProtocolError

from support.paths import load_vectors

KDF = load_vectors("ikev2_prf_skeyseed_prfplus.json")


def _prf_id(name: str) -> int:
    return crypto.PRF_NAMES[name]


@pytest.mark.parametrize("v", KDF["skeyseed"], ids=lambda v: v["id"])
def test_skeyseed(v: dict) -> None:
    nn = bytes.fromhex(v["ni_nr"])
    # the split between Ni and Nr does not matter for the result
    got = skeyseed(_prf_id(v["prf"]), nn[:8], nn[8:], bytes.fromhex(v["gir"]))
    assert got.hex() == v["skeyseed"]


@pytest.mark.parametrize("v", KDF["prf_plus"], ids=lambda v: v["id"])
def test_prf_plus(v: dict) -> None:
    n = int(v["output_len"])
    got = prf_plus(_prf_id(v["prf"]), bytes.fromhex(v["key"]), bytes.fromhex(v["seed"]), n)
    assert got.hex() == v["output"][: 2 * n] or got.hex().startswith(v["output"])


@pytest.mark.parametrize("v", KDF["chains"], ids=lambda v: v["from_vectors"])
def test_gir_to_keymat_chain(v: dict) -> None:
    pid = _prf_id(v["prf"])
    nn = bytes.fromhex(v["ni_nr"])
    seed = skeyseed(pid, nn, b"", bytes.fromhex(v["gir"]))
    assert seed.hex() == v["skeyseed"]
    km = prf_plus(pid, seed, nn + bytes.fromhex(v["spii_spir"]), int(v["keymat_len"]))
    assert km.hex().startswith(v["keymat"]) and len(v["keymat"]) >= 64


def test_derive_ike_keys_splits_keymat_in_rfc_order() -> None:
    v = KDF["chains"][0]
    pid = _prf_id(v["prf"])
    nn, spis = bytes.fromhex(v["ni_nr"]), bytes.fromhex(v["spii_spir"])
    seed = bytes.fromhex(v["skeyseed"])
    keys = derive_ike_keys(pid, 12, 128, 12, seed, nn[:8], nn[8:], spis[:8], spis[8:])
    km = prf_plus(pid, seed, nn + spis, 32 * 3 + 2 * 32 + 2 * 16)
    assert keys.sk_d == km[:32] and keys.sk_ai == km[32:64] and keys.sk_ar == km[64:96]
    assert keys.sk_ei == km[96:112] and keys.sk_er == km[112:128] and keys.sk_pr == km[-32:]
    assert "redacted" in repr(keys)


@pytest.mark.parametrize("v", load_vectors("hmac_sha2_rfc4868.json")["vectors"], ids=lambda v: v["id"])
def test_hmac_prf_and_integ_rfc4868(v: dict) -> None:
    t = v["ikev2_transform"]
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["data"])
    if t["type"] == "PRF":
        assert prf(t["id"], key, data).hex() == v["output"]
    else:
        alg = crypto.INTEG[t["id"]]
        assert alg.icv_len == v["output_len"]
        assert hmac.new(key, data, alg.hash).digest()[: alg.icv_len].hex() == v["output"]


@pytest.mark.parametrize("v", load_vectors("ikev2_ecp_rfc5903.json")["vectors"], ids=lambda v: str(v["group"]))
def test_ecp_rfc5903(v: dict) -> None:
    i = KeyExchange(v["group"], private=bytes.fromhex(v["i"]))
    r = KeyExchange(v["group"], private=bytes.fromhex(v["r"]))
    assert i.public.hex() == v["kei_payload_data"]
    assert r.public.hex() == v["ker_payload_data"]
    assert i.shared_secret(r.public).hex() == v["shared_secret"]
    assert r.shared_secret(i.public).hex() == v["shared_secret"]


def test_ecp_rejects_point_off_curve() -> None:
    v = load_vectors("ikev2_ecp_rfc5903.json")["vectors"][0]
    i = KeyExchange(19, private=bytes.fromhex(v["i"]))
    bad = bytearray(bytes.fromhex(v["ker_payload_data"]))
    bad[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        i.shared_secret(bytes(bad))
    with pytest.raises(RemoteProtocolError):
        i.shared_secret(bytes(63))


def test_x25519_rfc7748_8031() -> None:
    for v in load_vectors("ikev2_x25519_rfc7748_8031.json")["vectors"]:
        if "private_i" not in v:
            continue
        i = KeyExchange(31, private=bytes.fromhex(v["private_i"]))
        r = KeyExchange(31, private=bytes.fromhex(v["private_r"]))
        assert i.public.hex() == v["public_i"] and r.public.hex() == v["public_r"]
        assert i.shared_secret(r.public).hex() == v["shared_secret"]
    # a low-order point gives an all-zero secret and must be refused (RFC 8031 section 2)
    with pytest.raises(RemoteProtocolError):
        KeyExchange(31, private=bytes(range(32))).shared_secret(bytes(32))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("group", [1, 2, 5, 14, 15, 24])
def test_modp_agrees_with_cryptography(group: int) -> None:
    """Our pow()-based MODP groups against pyca/cryptography's FFDH with the vector-file prime."""
    from ipsecemu.ike.modp import MODP_GROUP24

    if group == 24:
        p, g, _q = MODP_GROUP24
    else:
        prime = {x["group"]: x for x in load_vectors("ikev2_modp_groups_rfc2409_rfc3526.json")["groups"]}[group]
        p, g = int(prime["prime"], 16), 2
    ours = KeyExchange(group, rng=lambda n: bytes([7]) * n)
    params = dh.DHParameterNumbers(p, g).parameters()
    theirs = params.generate_private_key()
    y = theirs.public_key().public_numbers().y
    size = (p.bit_length() + 7) // 8
    assert len(ours.public) == size
    secret = ours.shared_secret(y.to_bytes(size, "big"))
    peer = dh.DHPublicNumbers(int.from_bytes(ours.public, "big"), dh.DHParameterNumbers(p, g)).public_key()
    assert secret == theirs.exchange(peer).rjust(size, b"\0")
    for bad in (1, p - 1, p):
        with pytest.raises(RemoteProtocolError):
            ours.shared_secret(bad.to_bytes(size, "big"))


def test_rng_makes_keys_reproducible() -> None:
    for g in (14, 19, 20, 31):
        a = KeyExchange(g, rng=lambda n: bytes([5]) * n)
        b = KeyExchange(g, rng=lambda n: bytes([5]) * n)
        assert a.public == b.public and len(a.public) == KeyExchange.public_len(g)


def test_chacha20poly1305_ikev2_sk_rfc7634_appendix_b() -> None:
    v = [x for x in load_vectors("esp_ikev2_chacha20poly1305_rfc7634.json")["vectors"] if x["id"].endswith("_4")][0]
    c = SkCipher(28, bytes.fromhex(v["key"] + v["salt"]), None, b"")
    aad, iv = bytes.fromhex(v["aad"]), bytes.fromhex(v["iv"])
    plain = bytes.fromhex(v["plaintext"])
    body = c.seal(aad, plain[:-1], iv)  # plaintext ends with pad length 0
    assert body == iv + bytes.fromhex(v["ciphertext"] + v["tag"])
    assert c.open(aad, body) == plain[:-1]
    with pytest.raises(IntegrityError):
        c.open(aad[:-1] + b"\x00", body)


@pytest.mark.parametrize("encr,keylen,integ", [(12, 128, 2), (12, 256, 12), (20, 256, None), (19, 128, None), (3, None, 13)])
def test_sk_cipher_roundtrip_and_tamper(encr: int, keylen: int | None, integ: int | None) -> None:
    ek = bytes(range(crypto.encr_key_len(encr, keylen)))
    ak = bytes(range(crypto.INTEG[integ].key_len)) if integ else b""
    c = SkCipher(encr, ek, integ, ak)
    iv = bytes(c.encr.iv_len)
    for n in (0, 1, 15, 16, 100):
        inner = bytes(range(n))
        body = c.seal(b"hdr", inner, iv)
        assert len(body) == c.body_len(n)[1]
        assert c.open(b"hdr", body) == inner
        flipped = bytearray(body)
        flipped[len(iv)] ^= 0x40 if len(body) > len(iv) + c.icv_len else 0
        flipped[-1] ^= 1
        with pytest.raises(IntegrityError):
            c.open(b"hdr", bytes(flipped))


@pytest.mark.parametrize("group", [1, 2, 5, 14, 15, 16, 17, 18, 24])
def test_modp_openssl_matches_pow_with_injected_exponent(group: int) -> None:
    """The OpenSSL-backed MODP path reproduces plain pow() arithmetic for an injected private
    exponent (so vectors still hold), pads to the group size, and leaks no FFDH deprecation warning."""
    import warnings

    from ipsecemu.ike.modp import MODP_GROUP24, MODP_PRIMES

    p, g = (MODP_GROUP24[0], MODP_GROUP24[1]) if group == 24 else (MODP_PRIMES[group], 2)
    size = (p.bit_length() + 7) // 8
    # small exponents make leading-zero public values likely to be exercised by the padding
    xa, xb = 0x1234567 * group + 3, (1 << 200) + 977 * group
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = KeyExchange(group, private=xa.to_bytes(32, "big"))
        b = KeyExchange(group, private=xb.to_bytes(32, "big"))
        assert a.public == pow(g, xa, p).to_bytes(size, "big")
        assert b.public == pow(g, xb, p).to_bytes(size, "big")
        want = pow(g, xa * xb, p).to_bytes(size, "big")
        assert a.shared_secret(b.public) == want == b.shared_secret(a.public)


def test_group24_rejects_value_outside_prime_order_subgroup() -> None:
    from ipsecemu.ike.modp import MODP_GROUP24

    p = MODP_GROUP24[0]
    a = KeyExchange(24, rng=lambda n: bytes([9]) * n)
    # p - 2 is in range but (p-2)^q != 1 for this p (q-order subgroup), so it must be refused
    with pytest.raises(RemoteProtocolError):
        a.shared_secret((p - 2).to_bytes(256, "big"))
