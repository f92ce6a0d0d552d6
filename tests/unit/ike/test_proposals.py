"""strongSwan proposal strings and RFC 7296 §2.7 proposal selection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.ikev2 import IKEv2_Proposal, IKEv2_Transform

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.ike.proposals import (
    Proposal,
    ProposalError,
    Transform,
    check_selected,
    parse_proposal,
    parse_proposals,
    select,
)
from ipsecemu.ike.transforms import TransformType as TT

ENCR, PRF, INTEG, KE, ESN = TT.ENCR, TT.PRF, TT.INTEG, TT.KE, TT.ESN


def ids(p: Proposal) -> list[tuple[int, int, int | None]]:
    return [(int(t.type), t.id, t.key_length) for t in p.transforms]


@pytest.mark.parametrize(
    ("text", "proto", "want"),
    [
        ("aes256gcm16-prfsha384-ecp384", "ike", [(ENCR, 20, 256), (PRF, 6, None), (KE, 20, None)]),
        ("aes256-sha256-modp1024", "ike", [(ENCR, 12, 256), (PRF, 5, None), (INTEG, 12, None), (KE, 2, None)]),
        ("aes128-sha1-modp2048", "ike", [(ENCR, 12, 128), (PRF, 2, None), (INTEG, 2, None), (KE, 14, None)]),
        ("aes256-sha384-x25519", "ike", [(ENCR, 12, 256), (PRF, 6, None), (INTEG, 13, None), (KE, 31, None)]),
        ("aes256gcm16-ecp256", "esp", [(ENCR, 20, 256), (KE, 19, None), (ESN, 0, None)]),
        ("aes128gcm16-esn", "esp", [(ENCR, 20, 128), (ESN, 1, None)]),
        ("aes128gcm16-esn-noesn", "esp", [(ENCR, 20, 128), (ESN, 1, None), (ESN, 0, None)]),
        ("3des-md5", "esp", [(ENCR, 3, None), (INTEG, 1, None), (ESN, 0, None)]),
        ("chacha20poly1305-prfsha256-curve25519", "ike", [(ENCR, 28, None), (PRF, 5, None), (KE, 31, None)]),
        ("null-sha256", "esp", [(ENCR, 11, None), (INTEG, 12, None), (ESN, 0, None)]),
        # strongSwan drops integrity next to an AEAD cipher
        ("aes128gcm16-sha256", "esp", [(ENCR, 20, 128), (ESN, 0, None)]),
        ("AES256-SHA2_256-MODP2048S256", "ike", [(ENCR, 12, 256), (PRF, 5, None), (INTEG, 12, None), (KE, 24, None)]),
    ],
)
def test_parse(text: str, proto: str, want: list) -> None:
    assert ids(parse_proposal(text, proto)) == want


def test_several_algorithms_per_type_keep_order_and_imply_prfs() -> None:
    p = parse_proposal("aes128-aes256-sha256-sha1-modp2048-ecp256", "ike")
    assert [t.key_length for t in p.of_type(ENCR)] == [128, 256]
    assert [t.id for t in p.of_type(INTEG)] == [12, 2]
    assert [t.id for t in p.of_type(PRF)] == [5, 2]  # one implicit PRF per integrity algorithm
    assert [t.id for t in p.of_type(KE)] == [14, 19]
    assert p.to_strongswan_string() == "aes128-aes256-sha256-sha1-prfsha256-prfsha1-modp2048-ecp256"


def test_comma_list_numbers_proposals() -> None:
    ps = parse_proposals("aes256gcm16-prfsha384-ecp384, aes256-sha256-modp2048", "ike")
    assert [p.number for p in ps] == [1, 2]
    assert ps[0].is_aead and not ps[1].is_aead


@pytest.mark.parametrize(
    "text",
    ["aes256gcm16-prfsha384-ecp384", "aes256-sha256-prfsha256-modp1024", "aes128gcm16-esn",
     "aes256-sha512-prfsha512-ecp521"],
)
def test_strongswan_string_roundtrip(text: str) -> None:
    proto = "esp" if "esn" in text else "ike"
    p = parse_proposal(text, proto)
    assert p.to_strongswan_string() == text
    assert parse_proposal(p.to_strongswan_string(), proto) == p


def test_swanctl_display() -> None:
    assert parse_proposal("aes256-sha256-modp2048", "ike").to_swanctl_string() == (
        "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048")
    assert parse_proposal("aes128gcm16-esn", "esp").to_swanctl_string() == "AES_GCM_16-128/EXT_SEQ"


@pytest.mark.parametrize(
    ("text", "proto", "needle"),
    [
        ("aes256-foo-modp2048", "ike", "'foo'"),
        ("des-sha1-modp1024", "ike", "'des'"),
        ("aes256gcm16-ecp384", "ike", "PRF must be explicit"),
        ("aes256-aes128gcm16-sha1-modp2048", "ike", "cannot share"),
        ("aes256-sha1", "ike", "DH group"),
        ("aes256-modp2048", "ike", "aes256 needs an integrity"),
        ("null-sha1-modp2048", "ike", "null is not allowed in IKE"),
        ("aes256-sha1-modp2048-esn", "ike", "esn applies to ESP only"),
        ("aes256", "esp", "needs an integrity"),
        ("aes256-sha1-prfsha1", "esp", "prfsha1"),
        ("sha256-modp2048", "esp", "encryption algorithm is required"),
        ("aes128,,aes256", "esp", "empty proposal"),
        ("", "ike", "empty"),
    ],
)
def test_parse_errors_name_the_problem(text: str, proto: str, needle: str) -> None:
    with pytest.raises(ProposalError, match=None) as ei:
        parse_proposals(text, proto)
    assert needle in str(ei.value)


def test_bad_protocol() -> None:
    with pytest.raises(ProposalError, match="protocol"):
        parse_proposal("aes256-sha1-modp2048", "ah")


# ---------------------------------------------------------------- selection
def test_select_local_preference_by_default() -> None:
    local = parse_proposals("aes256-sha256-modp2048,aes128-sha1-modp1024", "ike")
    offered = parse_proposals("aes128-aes256-sha1-sha256-modp1024-modp2048", "ike")
    got = select(local, offered)
    assert got is not None and got.to_strongswan_string() == "aes256-sha256-prfsha256-modp2048"
    # exactly one transform per type, proposal number of the offer
    assert sorted(t.type for t in got.transforms) == [ENCR, PRF, INTEG, KE] and got.number == 1
    assert check_selected(offered, got)


def test_select_prefer_offered_order() -> None:
    local = parse_proposals("aes256-sha256-modp2048,aes128-sha1-modp1024", "ike")
    offered = parse_proposals("aes128-sha1-modp1024,aes256-sha256-modp2048", "ike")
    assert select(local, offered).to_strongswan_string() == "aes256-sha256-prfsha256-modp2048"
    got = select(local, offered, prefer_offered=True)
    assert got is not None and got.to_strongswan_string() == "aes128-sha1-prfsha1-modp1024"
    assert got.number == 1
    # inside one proposal too: the first acceptable transform in the preferred list wins
    local = parse_proposals("aes128-aes256-sha256-modp2048", "ike")
    offered = parse_proposals("aes256-aes128-sha256-modp2048", "ike")
    assert select(local, offered).encr.keyword == "aes128"
    assert select(local, offered, prefer_offered=True).encr.keyword == "aes256"


def test_select_second_offered_proposal_keeps_its_number_and_spi() -> None:
    offered = parse_proposals("aes128-sha1-modp1024,aes256gcm16-prfsha384-ecp384", "ike")
    offered[1] = Proposal("ike", offered[1].transforms, 2, b"\x01" * 8)
    got = select(parse_proposals("aes256gcm16-prfsha384-ecp384", "ike"), offered)
    assert got is not None and got.number == 2 and got.spi == b"\x01" * 8
    assert got.to_strongswan_string() == "aes256gcm16-prfsha384-ecp384"


def test_no_proposal_chosen() -> None:
    assert select(parse_proposals("aes256-sha256-ecp384", "ike"),
                  parse_proposals("aes256-sha256-modp2048", "ike")) is None
    # key length is part of the transform: AES-CBC-128 does not match AES-CBC-256
    assert select(parse_proposals("aes128-sha256-modp2048", "ike"),
                  parse_proposals("aes256-sha256-modp2048", "ike")) is None
    # IKE never matches ESP
    assert select(parse_proposals("aes256gcm16", "esp"), parse_proposals("aes256gcm16-prfsha256-ecp256", "ike")) is None


def test_esp_pfs_and_esn() -> None:
    pfs = parse_proposals("aes256gcm16-ecp256", "esp")
    nopfs = parse_proposals("aes256gcm16", "esp")
    assert select(pfs, nopfs) is None  # we require PFS, the peer offers none
    assert select(nopfs, pfs) is None  # the peer requires a group we do not want
    # PFS optional on the initiator's side: explicit KE NONE next to the group
    optional = [Proposal("esp", (*pfs[0].transforms, Transform(KE, 0)))]
    got = select(nopfs, optional)
    assert got is not None and got.ke is None and got.of_type(KE)[0].id == 0
    got = select(pfs, optional)
    assert got is not None and got.ke is not None and got.ke.keyword == "ecp256"
    assert select(parse_proposals("aes128gcm16-esn", "esp"), parse_proposals("aes128gcm16-noesn", "esp")) is None
    both = parse_proposals("aes128gcm16-esn-noesn", "esp")
    got = select(parse_proposals("aes128gcm16-esn", "esp"), both)
    assert got is not None and got.esn


def test_esp_offer_without_esn_transform_means_noesn() -> None:
    offer = [Proposal("esp", (Transform(ENCR, 20, 256),))]
    got = select(parse_proposals("aes256gcm16", "esp"), offer)
    assert got is not None and not got.esn


def test_aead_with_explicit_integ_none_matches() -> None:
    offer = [Proposal("esp", (Transform(ENCR, 20, 128), Transform(INTEG, 0), Transform(ESN, 0)))]
    got = select(parse_proposals("aes128gcm16", "esp"), offer)
    assert got is not None and got.integ is None


def test_unknown_transform_type_rejects_the_proposal() -> None:
    offer = parse_proposals("aes256-sha256-modp2048", "ike")
    odd = [Proposal("ike", (*offer[0].transforms, Transform(6, 35))), offer[0]]
    odd[1] = Proposal("ike", offer[0].transforms, 2)
    got = select(offer, odd)
    assert got is not None and got.number == 2  # proposal 1 (with ADDKE1) was skipped


def test_selected_esp_maps_to_dataplane_config() -> None:
    got = select(parse_proposals("aes256-sha256-esn", "esp"), parse_proposals("aes256-sha256-esn", "esp"))
    assert got is not None
    encr, integ, esn = got.esp_dataplane()
    assert (encr, integ, esn) == ("aes-cbc", "hmac-sha256-128", True)
    cfg = EspSaConfig(spi=0x1000, encr=encr, enc_key=bytes(got.encr.keymat_len), integ=integ,
                      integ_key=bytes(got.integ.key_len), esn=esn)
    assert cfg.encr == "aes-cbc"
    gcm = parse_proposal("aes128gcm16", "esp")
    e, i, _ = gcm.esp_dataplane()
    assert (e, i) == ("aes-gcm-16", None)
    EspSaConfig(spi=0x1001, encr=e, enc_key=bytes(gcm.encr.keymat_len))  # 16 + 4 salt bytes
    with pytest.raises(ProposalError):
        parse_proposal("aes128-sha1-modp2048", "ike").esp_dataplane()


def test_check_selected_rejects_unoffered_or_ambiguous_answers() -> None:
    offered = parse_proposals("aes128-sha256-modp2048", "ike")
    bad = Proposal("ike", (Transform(ENCR, 12, 256), Transform(PRF, 5), Transform(INTEG, 12), Transform(KE, 14)))
    assert not check_selected(offered, bad)
    two = Proposal("ike", (*offered[0].transforms, Transform(KE, 14)))
    assert not check_selected(offered, two)
    missing = Proposal("ike", (Transform(ENCR, 12, 128), Transform(PRF, 5), Transform(INTEG, 12)))
    assert not check_selected(offered, missing)
    wrong_number = Proposal("ike", offered[0].transforms, 3)
    assert not check_selected(offered, wrong_number)


def test_transforms_encode_like_scapy() -> None:
    """scapy builds and re-dissects our transforms with the same type/ID/key-length values."""
    p = parse_proposal("aes256-sha384-prfsha384-ecp384", "ike")
    chain = None
    for t in reversed(p.transforms):
        # scapy takes the whole TV attribute: AF bit | type 14 | value
        kw = {"length": 12, "key_length": 0x800E0000 | t.key_length} if t.key_length else {}
        layer = IKEv2_Transform(transform_type=int(t.type), transform_id=t.id, **kw)
        chain = layer if chain is None else layer / chain
    raw = bytes(IKEv2_Proposal(proposal=1, proto=1, trans_nb=len(p.transforms), trans=chain))
    back = IKEv2_Proposal(raw)
    got = []
    tr = back.trans
    while tr is not None and isinstance(tr, IKEv2_Transform):
        got.append((tr.transform_type, tr.transform_id, tr.key_length))
        tr = tr.payload if isinstance(tr.payload, IKEv2_Transform) else None
    assert [(a, b) for a, b, _ in got] == [(int(t.type), t.id) for t in p.transforms]
    assert got[0][2] == 256
    assert bytes.fromhex("0100000c800e0100") in raw  # ENCR AES-CBC with Key Length 256


_TOKENS = st.sampled_from(["aes128", "aes256", "aes256gcm16", "3des", "null", "chacha20poly1305", "sha1", "sha256",
                           "md5", "prfsha256", "prfmd5", "modp2048", "ecp384", "x25519", "esn", "noesn", "", "des",
                           "AES", "gcm", "-", ","])


@settings(max_examples=200, deadline=None)
@given(st.lists(_TOKENS, max_size=8), st.sampled_from(["ike", "esp"]))
def test_random_strings_parse_or_raise_proposal_error(tokens: list[str], proto: str) -> None:
    text = "-".join(tokens)
    try:
        ps = parse_proposals(text, proto)
    except ProposalError as exc:
        assert str(exc)
        return
    for p in ps:  # whatever parses round-trips through the display form and selects itself
        assert parse_proposal(p.to_strongswan_string(), proto).transforms == p.transforms
        assert select([p], [p]) is not None


_TRANSFORMS = st.builds(Transform, st.integers(1, 7), st.integers(0, 40), st.sampled_from([None, 128, 256, 77]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(Proposal, st.sampled_from(["ike", "esp"]), st.lists(_TRANSFORMS, max_size=6).map(tuple),
                          st.integers(1, 5)), max_size=4))
def test_select_on_arbitrary_offers_never_crashes(offered: list[Proposal]) -> None:
    offered = [Proposal(p.protocol, p.transforms, n) for n, p in enumerate(offered, 1)]  # numbers are unique
    local = parse_proposals("aes256-sha256-modp2048,aes128gcm16-prfsha256-ecp256", "ike")
    local += parse_proposals("aes256gcm16-ecp256,aes128-sha1", "esp")
    got = select(local, offered)
    if got is not None:  # a chosen proposal is one the initiator-side check accepts
        assert check_selected(offered, got)
