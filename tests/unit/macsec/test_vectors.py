"""The reference MACsec SecY against IEEE 802.1AE-2018 Annex C (and one DPDK frame), byte for byte."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsecemu.base.satypes import MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.macsec.reference import MacsecRx, MacsecTx
from ipsecemu.macsec.sectag import parse
from ipsecemu.macsec.xpn import xpn_iv

from support.paths import load_vectors

ANNEX_C = load_vectors("macsec_gcm_aes_annex_c.json")["vectors"]
DPDK = load_vectors("macsec_dpdk_extra.json")["vectors"]
ALL = ANNEX_C + DPDK


def _setup(v: dict) -> tuple[SecYConfig, MacsecSaConfig]:
    flags = v["tci_flags"] if "tci_flags" in v else _flags_from_tci(int(v["tci_an"], 16))
    secy = SecYConfig(
        include_sci=bool(v["sci_in_sectag"]),
        end_station=bool(flags["ES"]),
        confidentiality=v["protection"] == "confidentiality",
    )
    xpn = v["xpn"]
    sa = MacsecSaConfig(
        cipher=v["cipher_suite"].lower(),
        sak=bytes.fromhex(v["key"]),
        sci=bytes.fromhex(v["sci"]),
        an=v["an"],
        ssci=int(xpn["ssci"], 16) if xpn else None,
        salt=bytes.fromhex(xpn["salt"]) if xpn else None,
        next_pn=int(xpn["pn64"] if xpn else v["pn"], 16),
    )
    return secy, sa


def _flags_from_tci(tci: int) -> dict[str, int]:
    return {name: (tci >> bit) & 1 for name, bit in (("V", 7), ("ES", 6), ("SC", 5), ("SCB", 4), ("E", 3), ("C", 2))}


def _ids(v: dict) -> str:
    return v["id"]


def test_vector_counts() -> None:
    assert len(ANNEX_C) == 32
    assert len(DPDK) == 1
    kinds = {(v["cipher_suite"], v["protection"]) for v in ANNEX_C}
    assert len(kinds) == 8  # 128/256 x plain/XPN x integrity/confidentiality


@pytest.mark.parametrize("v", ALL, ids=_ids)
def test_protect_reproduces_vector(v: dict) -> None:
    secy, sa = _setup(v)
    tx = MacsecTx(secy, sa)
    verdict, out = tx.protect(bytes.fromhex(v["unprotected"]["frame"]))
    assert verdict is Verdict.OK
    assert out.hex() == v["protected"]["frame"]
    assert tx.next_pn == sa.next_pn + 1
    assert tx.counters.packets == 1
    assert tx.counters.bytes == len(v["unprotected"]["user_data"]) // 2


@pytest.mark.parametrize("v", ALL, ids=_ids)
def test_validate_recovers_vector(v: dict) -> None:
    secy, sa = _setup(v)
    rx = MacsecRx(secy)
    rx.add_sa(sa)
    res = rx.validate(bytes.fromhex(v["protected"]["frame"]))
    assert res.verdict is Verdict.OK
    assert res.frame.hex() == v["unprotected"]["frame"]
    assert res.sci == sa.sci
    assert res.an == v["an"]
    assert res.pn == sa.next_pn
    c = rx.counters_for(sa.sci, sa.an)
    assert (c.packets, c.bytes) == (1, len(v["unprotected"]["user_data"]) // 2)
    # The same frame again is dropped under the default strict ordering (window 0).  With XPN
    # the stale wire PN is read as the next 2^32 block (802.1AEbw recovery), so the IV is
    # wrong and the ICV fails instead; either way the SA state does not move.
    again = rx.validate(bytes.fromhex(v["protected"]["frame"]))
    assert again.verdict is (Verdict.BAD_ICV if v["xpn"] else Verdict.REPLAY)
    assert rx.next_pn_for(sa.sci, sa.an) == sa.next_pn + 1


@pytest.mark.parametrize("v", [v for v in ANNEX_C if v["xpn"]], ids=_ids)
def test_xpn_vector_recovers_high_half(v: dict) -> None:
    """Only the low 32 PN bits are on the wire: the RX SA must supply pn_msb32 itself."""
    secy, sa = _setup(v)
    msb = int(v["xpn"]["pn_msb32"], 16)
    rx = MacsecRx(secy)
    rx.add_sa(replace(sa, next_pn=(msb << 32) | 1))  # lowest acceptable PN in the same 2^32 block
    res = rx.validate(bytes.fromhex(v["protected"]["frame"]))
    assert res.verdict is Verdict.OK
    assert res.pn == int(v["xpn"]["pn64"], 16)
    # Lowest acceptable PN at the very end of the previous block: the wire PN is below its
    # low half, so the high half is taken + 1 = msb, and the frame still decrypts.
    rx2 = MacsecRx(secy)
    rx2.add_sa(replace(sa, next_pn=((msb - 1) << 32) | 0xFFFFFFFF))
    assert rx2.validate(bytes.fromhex(v["protected"]["frame"])).verdict is Verdict.OK
    # Two blocks too low: the wrong IV, so the ICV fails.
    rx3 = MacsecRx(secy)
    rx3.add_sa(replace(sa, next_pn=(msb - 2) << 32 | 1))
    assert rx3.validate(bytes.fromhex(v["protected"]["frame"])).verdict is Verdict.BAD_ICV


@pytest.mark.parametrize("v", ALL, ids=_ids)
def test_sectag_and_iv_match_vector(v: dict) -> None:
    frame = bytes.fromhex(v["protected"]["frame"])
    p = parse(frame)
    assert p.verdict is Verdict.OK
    assert p.tag is not None
    assert p.tag.encode().hex() == v["sectag"]
    assert p.tag.tci_an == int(v["tci_an"], 16)
    assert p.tag.sl == v["sl"]
    assert p.tag.an == v["an"]
    assert p.tag.pn == int(v["pn"], 16)
    assert p.secure_data.hex() == v["protected"]["secure_data"]
    assert p.icv.hex() == v["protected"]["icv"]
    if v["xpn"]:
        iv = xpn_iv(int(v["xpn"]["ssci"], 16), bytes.fromhex(v["xpn"]["salt"]), int(v["xpn"]["pn64"], 16))
        assert iv.hex() == v["iv"]
    else:
        assert v["iv"] == v["sci"] + v["pn"]
