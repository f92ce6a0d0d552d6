"""scapy's MACsecSA as an independent MACsec implementation: each side opens what the other seals."""

from __future__ import annotations

import os

import pytest
from scapy.compat import raw
from scapy.contrib.macsec import MACsec, MACsecSA
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ipsecemu.base.algorithms import MACSEC_CIPHERS
from ipsecemu.base.satypes import MacsecSaConfig, SecYConfig, Verdict
from ipsecemu.macsec.reference import MacsecRx, MacsecTx

SRC = "02:00:00:00:00:01"
DST = "02:00:00:00:00:02"
SCI_EXPLICIT = bytes.fromhex("0200000000010007")
SCI_IMPLICIT = bytes.fromhex("0200000000010001")  # source MAC | port 1, as the receiver derives it
SSCI = 0x11223344
SALT = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabac")

# PN sequences: a plain run, and for XPN one that crosses the 2^32 boundary.
START_PN = {False: 1, True: (1 << 32) - 2}


def _frames() -> list[Ether]:
    return [
        Ether(src=SRC, dst=DST) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"x" * 10),
        Ether(src=SRC, dst=DST) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3, dport=4) / Raw(os.urandom(300)),
        Ether(src=SRC, dst=DST) / Dot1Q(vlan=42) / IP(src="10.0.0.1", dst="10.0.0.2") / Raw(b"v" * 40),
        Ether(src=SRC, dst=DST, type=0x88B5) / Raw(b"\x00" * 34),  # secure data exactly 36 bytes, SL=36
    ]


CASES = [
    pytest.param(cipher, conf, sci, id=f"{cipher}-{'conf' if conf else 'integ'}-{'sci' if sci else 'nosci'}")
    for cipher in MACSEC_CIPHERS
    for conf in (True, False)
    for sci in (True, False)
]


def _ours(cipher: str, conf: bool, include_sci: bool, next_pn: int) -> tuple[SecYConfig, MacsecSaConfig]:
    keylen, xpn = MACSEC_CIPHERS[cipher]
    sak = bytes(range(1, keylen + 1))
    secy = SecYConfig(include_sci=include_sci, confidentiality=conf)
    sa = MacsecSaConfig(
        cipher=cipher,
        sak=sak,
        sci=SCI_EXPLICIT if include_sci else SCI_IMPLICIT,
        an=1,
        ssci=SSCI if xpn else None,
        salt=SALT if xpn else None,
        next_pn=next_pn,
    )
    return secy, sa


def _scapy_sa(sa: MacsecSaConfig, conf: bool, include_sci: bool, pn: int) -> MACsecSA:
    return MACsecSA(
        sci=sa.sci,
        an=sa.an,
        pn=pn,
        key=sa.sak,
        icvlen=16,
        encrypt=conf,
        send_sci=include_sci,
        xpn_en=sa.xpn,
        ssci=sa.ssci,
        salt=sa.salt,
    )


@pytest.mark.parametrize(("cipher", "conf", "include_sci"), CASES)
def test_we_protect_scapy_decrypts(cipher: str, conf: bool, include_sci: bool) -> None:
    start = START_PN[MACSEC_CIPHERS[cipher][1]]
    secy, sa = _ours(cipher, conf, include_sci, start)
    tx = MacsecTx(secy, sa)
    for i, pkt in enumerate(_frames()):
        verdict, wire = tx.protect(raw(pkt))
        assert verdict is Verdict.OK
        pn = start + i
        parsed = Ether(wire)
        tag = parsed[MACsec]
        assert (tag.PN, tag.AN, tag.SC, tag.E, tag.C) == (pn & 0xFFFFFFFF, 1, include_sci, conf, conf)
        ssa = _scapy_sa(sa, conf, include_sci, pn)
        clear = ssa.decap(ssa.decrypt(parsed))  # raises InvalidTag if the ICV is wrong
        assert raw(clear) == raw(pkt)
        if not conf:
            assert raw(pkt)[12:] in wire  # integrity only: the data travels in clear


@pytest.mark.parametrize(("cipher", "conf", "include_sci"), CASES)
def test_scapy_encrypts_we_validate(cipher: str, conf: bool, include_sci: bool) -> None:
    start = START_PN[MACSEC_CIPHERS[cipher][1]]
    secy, sa = _ours(cipher, conf, include_sci, start)
    rx = MacsecRx(secy)
    rx.add_sa(sa)
    frames = _frames()
    for i, pkt in enumerate(frames):
        pn = start + i
        ssa = _scapy_sa(sa, conf, include_sci, pn)
        wire = raw(ssa.encrypt(ssa.encap(pkt)))
        # A tampered copy first: caught by the ICV, and it must not move the window...
        bad = bytearray(wire)
        bad[-20] ^= 0x01
        assert rx.validate(bytes(bad)).verdict is Verdict.BAD_ICV
        # ...so the genuine frame with the same PN is still accepted.
        res = rx.validate(wire)
        assert res.verdict is Verdict.OK, res
        assert res.frame == raw(pkt)
        assert res.pn == pn
        assert res.sci == sa.sci
    c = rx.counters_for(sa.sci, sa.an)
    assert c.packets == len(frames)
    assert c.bad_icv == len(frames)
    assert c.bytes == sum(len(raw(p)) - 12 for p in frames)
