"""MACsec SecTAG encoding and parsing (IEEE 802.1AE-2018 clause 9).

SecTAG = MACsec EtherType (0x88E5) | TCI/AN | SL | PN (32 bit) | [SCI (8)].
The TCI bits, most significant first: V, ES, SC, SCB, E, C, then the 2-bit AN.

:func:`parse` never raises on wire input: it returns a :class:`ParsedFrame` whose verdict
says why a frame is unusable (TOO_SHORT, NOT_PROTECTED, BAD_HEADER), so the receive path
can count it and move on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ipsecemu.base.satypes import Verdict

ETHERTYPE_MACSEC = 0x88E5
ETH_ADDRS_LEN = 12  # DA | SA
ICV_LEN = 16
SECTAG_LEN = 8  # EtherType | TCI/AN | SL | PN
SCI_LEN = 8
SL_MAX = 48  # SL carries the secure-data length only when it is below this

TCI_V = 0x80
TCI_ES = 0x40
TCI_SC = 0x20
TCI_SCB = 0x10
TCI_E = 0x08
TCI_C = 0x04
AN_MASK = 0x03

_HDR = struct.Struct("!HBBI")


def implicit_sci(src_mac: bytes) -> bytes:
    """The SCI of a frame without an explicit SCI: source MAC | port 0x0001."""
    return bytes(src_mac) + b"\x00\x01"


def short_length(secure_data_len: int) -> int:
    """SL for a given secure-data length: the length if it is below 48, else 0."""
    return secure_data_len if secure_data_len < SL_MAX else 0


@dataclass(frozen=True)
class SecTag:
    """One SecTAG.  ``pn`` is the 32-bit wire PN (the low half for XPN)."""

    an: int
    pn: int
    sl: int = 0  # the whole SL octet, so set reserved bits show up as SL >= 48
    sci: bytes | None = None  # present exactly when the SC bit is set
    es: bool = False
    scb: bool = False
    e: bool = False
    c: bool = False
    v: bool = False

    @property
    def sc(self) -> bool:
        return self.sci is not None

    @property
    def tci_an(self) -> int:
        tci = (
            (TCI_V if self.v else 0)
            | (TCI_ES if self.es else 0)
            | (TCI_SC if self.sc else 0)
            | (TCI_SCB if self.scb else 0)
            | (TCI_E if self.e else 0)
            | (TCI_C if self.c else 0)
        )
        return tci | (self.an & AN_MASK)

    def __len__(self) -> int:
        return SECTAG_LEN + (SCI_LEN if self.sc else 0)

    def encode(self) -> bytes:
        """The SecTAG bytes, starting with the MACsec EtherType."""
        if not 0 <= self.an <= 3 or not 0 <= self.pn < (1 << 32) or not 0 <= self.sl <= 0xFF:
            raise ValueError(f"SecTAG field out of range: an={self.an} pn={self.pn} sl={self.sl}")
        if self.sci is not None and len(self.sci) != SCI_LEN:
            raise ValueError(f"sci: must be {SCI_LEN} bytes, got {len(self.sci)}")
        return _HDR.pack(ETHERTYPE_MACSEC, self.tci_an, self.sl, self.pn) + (self.sci or b"")


@dataclass(frozen=True)
class ParsedFrame:
    """Result of :func:`parse`.  ``tag`` is set when the SecTAG could be decoded (also for
    BAD_HEADER, so counters and traces can show it); ``secure_data``/``icv`` only on OK."""

    verdict: Verdict
    tag: SecTag | None = None
    secure_data: bytes = b""
    icv: bytes = b""

    @property
    def header_len(self) -> int:
        """DA | SA | SecTAG: the length of the AAD of an encrypted frame."""
        return ETH_ADDRS_LEN + (len(self.tag) if self.tag else 0)


def parse(frame: bytes, icv_len: int = ICV_LEN) -> ParsedFrame:
    """Decode and sanity-check the SecTAG of an Ethernet frame (api.py validate steps 1-3).

    Checks, first failure wins: TOO_SHORT (< 14 bytes), NOT_PROTECTED (EtherType is not
    0x88E5; the caller decides whether that is a drop), TOO_SHORT (no room for SecTAG and
    ICV), BAD_HEADER (V=1; ES with SC; SCB with SC; E without C; SL >= 48; SL not matching
    the secure-data length).
    """
    n = len(frame)
    if n < ETH_ADDRS_LEN + 2:
        return ParsedFrame(Verdict.TOO_SHORT)
    if frame[12] != ETHERTYPE_MACSEC >> 8 or frame[13] != ETHERTYPE_MACSEC & 0xFF:
        return ParsedFrame(Verdict.NOT_PROTECTED)
    if n < ETH_ADDRS_LEN + SECTAG_LEN:
        return ParsedFrame(Verdict.TOO_SHORT)
    _, tci_an, sl, pn = _HDR.unpack_from(frame, ETH_ADDRS_LEN)
    has_sci = bool(tci_an & TCI_SC)
    tag_end = ETH_ADDRS_LEN + SECTAG_LEN + (SCI_LEN if has_sci else 0)
    if n < tag_end + icv_len:
        return ParsedFrame(Verdict.TOO_SHORT)
    tag = SecTag(
        an=tci_an & AN_MASK,
        pn=pn,
        sl=sl,
        sci=bytes(frame[tag_end - SCI_LEN : tag_end]) if has_sci else None,
        es=bool(tci_an & TCI_ES),
        scb=bool(tci_an & TCI_SCB),
        e=bool(tci_an & TCI_E),
        c=bool(tci_an & TCI_C),
        v=bool(tci_an & TCI_V),
    )
    secure_len = n - tag_end - icv_len
    bad = (
        tag.v
        or (tag.es and tag.sc)
        or (tag.scb and tag.sc)
        or (tag.e and not tag.c)
        or sl >= SL_MAX
        or (sl != 0 and sl != secure_len)
        or (sl == 0 and secure_len < SL_MAX)
    )
    if bad:
        return ParsedFrame(Verdict.BAD_HEADER, tag)
    return ParsedFrame(Verdict.OK, tag, bytes(frame[tag_end : n - icv_len]), bytes(frame[n - icv_len :]))
