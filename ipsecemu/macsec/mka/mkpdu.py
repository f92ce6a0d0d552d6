"""MKPDU codec: EAPOL-MKA frames (IEEE 802.1X-2010 clause 11.11, XPN set from 802.1X-2020).

A frame is ``DA | SA | 0x888E | EAPOL(version, type 5, body length) | parameter sets | ICV``.
The Basic Parameter Set comes first and has no type octet; the others start with a 4-octet
header (type, one type-specific octet, 4 reserved/flag bits + a 12-bit body length).  Bodies
are padded to a multiple of 4 octets; the length field does not count the padding.  The ICV
(AES-CMAC with the ICK over DA..last parameter set) is the last 16 octets of the EAPOL body,
optionally announced by an ICV Indicator set (type 255).

:func:`parse_frame` raises only :class:`MkpduError` for any input; it does not check the
ICV (that needs the ICK of the CA named in the Basic Parameter Set, see :func:`verify`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.algorithms import MACSEC
from ipsecemu.base.errors import ProtocolError
from ipsecemu.macsec.mka.kdf import ICV_LEN, MI_LEN, aes_cmac, cmac_verify

ETHERTYPE_EAPOL = 0x888E
PAE_GROUP_ADDR = bytes.fromhex("0180c2000003")
EAPOL_VERSION = 3
EAPOL_TYPE_MKA = 5
MKA_VERSION = 3
ALGORITHM_AGILITY = 0x0080C201

LIVE_PEER_LIST = 1
POTENTIAL_PEER_LIST = 2
SAK_USE = 3
DISTRIBUTED_SAK = 4
XPN = 8
ICV_INDICATOR = 255

#: MACsec cipher suite identifiers (802.1AE-2018 Table 14-1) by ipsecemu cipher name.
CIPHER_SUITES: dict[str, int] = {c.name: c.suite_id for c in MACSEC.values()}
CIPHER_BY_SUITE = {v: k for k, v in CIPHER_SUITES.items()}
CIPHER_BY_SUITE[0x0080020001000001] = "gcm-aes-128"  # deprecated 802.1AE-2006 identifier

_ETH_HDR = 14
_EAPOL_HDR = 4
_BASIC_FIXED = 28  # body length of the Basic Parameter Set without the CKN


class MkpduError(ProtocolError, ValueError):
    """The bytes are not a well-formed MKPDU; the message says what is wrong."""


@dataclass(frozen=True)
class BasicParameterSet:
    sci: bytes  # 8 bytes
    mi: bytes  # 12 bytes
    mn: int
    ckn: bytes  # 1..32 bytes
    key_server_priority: int = 0x10
    key_server: bool = False
    macsec_desired: bool = True
    macsec_capability: int = 3  # integrity and confidentiality with offsets 0/30/50
    version: int = MKA_VERSION
    algorithm_agility: int = ALGORITHM_AGILITY


@dataclass(frozen=True)
class PeerEntry:
    mi: bytes
    mn: int


@dataclass(frozen=True)
class SakUse:
    """MACsec SAK Use.  ``keys=False`` is the empty body (no SAK in use, plain text)."""

    keys: bool = True
    latest_an: int = 0
    latest_tx: bool = False
    latest_rx: bool = False
    old_an: int = 0
    old_tx: bool = False
    old_rx: bool = False
    plain_tx: bool = False
    plain_rx: bool = False
    delay_protect: bool = False
    latest_ks_mi: bytes = bytes(MI_LEN)
    latest_kn: int = 0
    latest_lowest_pn: int = 0  # low 32 bits (XPN: high halves go in the XPN set)
    old_ks_mi: bytes = bytes(MI_LEN)
    old_kn: int = 0
    old_lowest_pn: int = 0


@dataclass(frozen=True)
class DistributedSak:
    """Distributed SAK.  ``wrapped`` empty means "use no SAK" (body length 0).
    ``cipher_suite`` is None for the default GCM-AES-128 (28-octet body)."""

    an: int = 0
    confidentiality_offset: int = 0
    kn: int = 0
    wrapped: bytes = b""
    cipher_suite: int | None = None


@dataclass(frozen=True)
class XpnParameterSet:
    """802.1X-2020 XPN set: the high 32 bits of the latest/old lowest acceptable PNs."""

    suspension_time: int = 0
    latest_lowest_pn_high: int = 0
    old_lowest_pn_high: int = 0


@dataclass(frozen=True)
class UnknownSet:
    type: int
    octet2: int
    body: bytes


@dataclass(frozen=True)
class Mkpdu:
    basic: BasicParameterSet
    live_peers: tuple[PeerEntry, ...] | None = None
    potential_peers: tuple[PeerEntry, ...] | None = None
    sak_use: SakUse | None = None
    distributed_sak: DistributedSak | None = None
    xpn: XpnParameterSet | None = None
    key_server_ssci: int = 0  # 802.1X-2020: octet 2 of the Live Peer List
    unknown: tuple[UnknownSet, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ParsedFrame:
    dst: bytes
    src: bytes
    mkpdu: Mkpdu
    signed: bytes  # the octets the ICV covers
    icv: bytes


# ---------------------------------------------------------------- encoding


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _set_header(ptype: int, octet2: int, body_len: int, flags: int = 0) -> bytes:
    if body_len > 0xFFF:
        raise MkpduError(f"parameter set {ptype}: body of {body_len} octets does not fit 12 bits")
    return bytes([ptype, octet2, (flags << 4) | (body_len >> 8), body_len & 0xFF])


def _encode_basic(b: BasicParameterSet) -> bytes:
    if len(b.sci) != 8 or len(b.mi) != MI_LEN or not 1 <= len(b.ckn) <= 32:
        raise MkpduError("basic parameter set: sci must be 8, mi 12, ckn 1..32 bytes")
    flags = (b.key_server << 3) | (b.macsec_desired << 2) | (b.macsec_capability & 3)
    body_len = _BASIC_FIXED + len(b.ckn)
    head = bytes([b.version, b.key_server_priority, (flags << 4) | (body_len >> 8), body_len & 0xFF])
    fixed = b.sci + b.mi + b.mn.to_bytes(4, "big") + b.algorithm_agility.to_bytes(4, "big")
    return head + fixed + _pad(b.ckn)


def _encode_peers(ptype: int, peers: tuple[PeerEntry, ...], octet2: int) -> bytes:
    body = b"".join(p.mi + p.mn.to_bytes(4, "big") for p in peers)
    return _set_header(ptype, octet2, len(body)) + body


def _encode_sak_use(s: SakUse) -> bytes:
    o2 = (s.latest_an << 6) | (s.latest_tx << 5) | (s.latest_rx << 4)
    o2 |= (s.old_an << 2) | (s.old_tx << 1) | s.old_rx
    flags = (s.plain_tx << 3) | (s.plain_rx << 2) | s.delay_protect
    if not s.keys:
        return _set_header(SAK_USE, o2, 0, flags)
    body = (
        s.latest_ks_mi
        + s.latest_kn.to_bytes(4, "big")
        + s.latest_lowest_pn.to_bytes(4, "big")
        + s.old_ks_mi
        + s.old_kn.to_bytes(4, "big")
        + s.old_lowest_pn.to_bytes(4, "big")
    )
    return _set_header(SAK_USE, o2, len(body), flags) + body


def _encode_dist_sak(d: DistributedSak) -> bytes:
    o2 = (d.an << 6) | (d.confidentiality_offset << 4)
    if not d.wrapped:
        return _set_header(DISTRIBUTED_SAK, o2, 0)
    body = d.kn.to_bytes(4, "big")
    if d.cipher_suite is not None:
        body += d.cipher_suite.to_bytes(8, "big")
    body += d.wrapped
    return _set_header(DISTRIBUTED_SAK, o2, len(body)) + _pad(body)


def _encode_xpn(x: XpnParameterSet) -> bytes:
    body = x.latest_lowest_pn_high.to_bytes(4, "big") + x.old_lowest_pn_high.to_bytes(4, "big")
    return _set_header(XPN, x.suspension_time, len(body)) + body


def encode_body(m: Mkpdu) -> bytes:
    """The parameter sets (everything between the EAPOL header and the ICV)."""
    out = _encode_basic(m.basic)
    if m.live_peers is not None:
        out += _encode_peers(LIVE_PEER_LIST, m.live_peers, m.key_server_ssci & 0xFF)
    if m.potential_peers is not None:
        out += _encode_peers(POTENTIAL_PEER_LIST, m.potential_peers, 0)
    if m.sak_use is not None:
        out += _encode_sak_use(m.sak_use)
    if m.distributed_sak is not None:
        out += _encode_dist_sak(m.distributed_sak)
    if m.xpn is not None:
        out += _encode_xpn(m.xpn)
    for u in m.unknown:
        out += _set_header(u.type, u.octet2, len(u.body)) + _pad(u.body)
    return out


def encode_frame(
    m: Mkpdu, ick: bytes, src: bytes, dst: bytes = PAE_GROUP_ADDR, *, icv_indicator: bool = False
) -> bytes:
    """A complete Ethernet frame carrying ``m``, signed with ``ick``."""
    if len(src) != 6 or len(dst) != 6:
        raise MkpduError("src/dst: MAC addresses are 6 bytes")
    body = encode_body(m)
    if icv_indicator:
        body += _set_header(ICV_INDICATOR, 0, ICV_LEN)
    eapol = bytes([EAPOL_VERSION, EAPOL_TYPE_MKA]) + (len(body) + ICV_LEN).to_bytes(2, "big")
    signed = dst + src + ETHERTYPE_EAPOL.to_bytes(2, "big") + eapol + body
    return signed + aes_cmac(ick, signed)


# ---------------------------------------------------------------- decoding


def _peer_list(body: bytes, what: str) -> tuple[PeerEntry, ...]:
    if len(body) % 16:
        raise MkpduError(f"{what}: body length {len(body)} is not a multiple of 16")
    return tuple(
        PeerEntry(body[i : i + MI_LEN], int.from_bytes(body[i + MI_LEN : i + 16], "big"))
        for i in range(0, len(body), 16)
    )


def _sak_use(o2: int, flags: int, body: bytes) -> SakUse:
    bits: dict[str, Any] = {  # ints and bools of the SAK-use flags
        "latest_an": o2 >> 6,
        "latest_tx": bool(o2 & 0x20),
        "latest_rx": bool(o2 & 0x10),
        "old_an": (o2 >> 2) & 3,
        "old_tx": bool(o2 & 2),
        "old_rx": bool(o2 & 1),
        "plain_tx": bool(flags & 8),
        "plain_rx": bool(flags & 4),
        "delay_protect": bool(flags & 1),
    }
    if not body:
        return SakUse(keys=False, **bits)
    if len(body) != 40:
        raise MkpduError(f"SAK use: body length must be 0 or 40, got {len(body)}")
    return SakUse(
        keys=True,
        latest_ks_mi=body[0:12],
        latest_kn=int.from_bytes(body[12:16], "big"),
        latest_lowest_pn=int.from_bytes(body[16:20], "big"),
        old_ks_mi=body[20:32],
        old_kn=int.from_bytes(body[32:36], "big"),
        old_lowest_pn=int.from_bytes(body[36:40], "big"),
        **bits,
    )


def _dist_sak(o2: int, body: bytes) -> DistributedSak:
    an, offset = o2 >> 6, (o2 >> 4) & 3
    if not body:
        return DistributedSak(an=an, confidentiality_offset=offset)
    if len(body) == 28:  # default cipher suite: KN + 24-octet wrapped 128-bit SAK
        return DistributedSak(an, offset, int.from_bytes(body[:4], "big"), body[4:])
    if len(body) in (36, 52):  # KN + cipher suite + wrapped 128/256-bit SAK
        suite = int.from_bytes(body[4:12], "big")
        return DistributedSak(an, offset, int.from_bytes(body[:4], "big"), body[12:], suite)
    raise MkpduError(f"distributed SAK: body length must be 0, 28, 36 or 52, got {len(body)}")


def parse_frame(frame: bytes) -> ParsedFrame:
    """Parse an Ethernet frame into an :class:`Mkpdu`; raises MkpduError when malformed."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise MkpduError("frame: must be bytes")
    frame = bytes(frame)
    if len(frame) < _ETH_HDR + _EAPOL_HDR:
        raise MkpduError(f"frame: {len(frame)} octets is too short for Ethernet + EAPOL headers")
    if int.from_bytes(frame[12:14], "big") != ETHERTYPE_EAPOL:
        raise MkpduError(f"frame: EtherType {frame[12:14].hex()} is not EAPOL (888e)")
    if frame[15] != EAPOL_TYPE_MKA:
        raise MkpduError(f"EAPOL: packet type {frame[15]} is not EAPOL-MKA (5)")
    if frame[14] < 1:
        raise MkpduError("EAPOL: protocol version 0 is invalid")
    body_len = int.from_bytes(frame[16:18], "big")
    end = _ETH_HDR + _EAPOL_HDR + body_len
    if end > len(frame):
        raise MkpduError(f"EAPOL: body length {body_len} runs past the end of the frame")
    if body_len < 4 + _BASIC_FIXED + 1 + ICV_LEN:
        raise MkpduError(f"EAPOL: body length {body_len} is too short for an MKPDU")
    sets_end = end - ICV_LEN
    pos = _ETH_HDR + _EAPOL_HDR

    # Basic Parameter Set: no type octet, version first.
    version, prio, o3, o4 = frame[pos : pos + 4]
    blen = ((o3 & 0x0F) << 8) | o4
    if version < 1:
        raise MkpduError("basic parameter set: MKA version 0 is invalid")
    if not _BASIC_FIXED + 1 <= blen <= _BASIC_FIXED + 32:
        raise MkpduError(f"basic parameter set: body length {blen} (CKN must be 1..32 octets)")
    bend = pos + 4 + blen
    if pos + 4 + blen + (-blen % 4) > sets_end:
        raise MkpduError("basic parameter set: runs past the end of the MKPDU")
    b = frame[pos + 4 : bend]
    flags = o3 >> 4
    basic = BasicParameterSet(
        sci=b[0:8],
        mi=b[8:20],
        mn=int.from_bytes(b[20:24], "big"),
        algorithm_agility=int.from_bytes(b[24:28], "big"),
        ckn=b[28:],
        key_server_priority=prio,
        key_server=bool(flags & 8),
        macsec_desired=bool(flags & 4),
        macsec_capability=flags & 3,
        version=version,
    )
    pos = bend + (-blen % 4)

    fields: dict[str, object] = {}
    unknown: list[UnknownSet] = []
    seen: set[int] = set()
    signed_end = sets_end
    while pos < sets_end:
        if pos + 4 > sets_end:
            raise MkpduError(f"parameter set header truncated at offset {pos}")
        ptype, o2, o3, o4 = frame[pos : pos + 4]
        plen = ((o3 & 0x0F) << 8) | o4
        if ptype == ICV_INDICATOR:
            if plen != ICV_LEN or pos + 4 != sets_end:
                raise MkpduError("ICV indicator: must announce a 16-octet ICV and come last")
            break
        if pos + 4 + plen + (-plen % 4) > sets_end:
            raise MkpduError(f"parameter set type {ptype}: body length {plen} runs past the MKPDU")
        if ptype in seen:
            raise MkpduError(f"parameter set type {ptype}: appears twice")
        seen.add(ptype)
        body = frame[pos + 4 : pos + 4 + plen]
        if ptype == LIVE_PEER_LIST:
            fields["live_peers"] = _peer_list(body, "live peer list")
            fields["key_server_ssci"] = o2
        elif ptype == POTENTIAL_PEER_LIST:
            fields["potential_peers"] = _peer_list(body, "potential peer list")
        elif ptype == SAK_USE:
            fields["sak_use"] = _sak_use(o2, o3 >> 4, body)
        elif ptype == DISTRIBUTED_SAK:
            fields["distributed_sak"] = _dist_sak(o2, body)
        elif ptype == XPN:
            if plen != 8:
                raise MkpduError(f"XPN parameter set: body length must be 8, got {plen}")
            fields["xpn"] = XpnParameterSet(
                o2, int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big")
            )
        else:
            unknown.append(UnknownSet(ptype, o2, body))
        pos += 4 + plen + (-plen % 4)
    mkpdu = Mkpdu(basic=basic, unknown=tuple(unknown), **fields)  # type: ignore[arg-type]
    return ParsedFrame(
        dst=frame[0:6], src=frame[6:12], mkpdu=mkpdu, signed=frame[:signed_end], icv=frame[sets_end:end]
    )


def verify(parsed: ParsedFrame, ick: bytes) -> bool:
    """True when the frame's ICV is the AES-CMAC of the signed octets under ``ick``."""
    return cmac_verify(ick, parsed.signed, parsed.icv)
