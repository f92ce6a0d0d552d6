"""IKEv2 message codec (RFC 7296 section 3): header, payload chain, SA/KE/ID/AUTH/Nonce/Notify/
Delete/Vendor/TS/SK/SKF/CERT/CERTREQ/CP; unknown payloads are kept (or rejected if critical).

Decoding is bounded: every length is checked against the bytes that remain, at most
``MAX_PAYLOADS`` payloads per chain, and every failure is a ``ParseError`` (a
RemoteProtocolError carrying INVALID_SYNTAX, INVALID_MAJOR_VERSION or
UNSUPPORTED_CRITICAL_PAYLOAD), never another exception.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from .consts import ATTR_KEY_LENGTH, Exchange, Flags, Notify, Payload, TsType
from .crypto import SkCipher
from .errors import LocalProtocolError, ParseError
from .ts import TrafficSelector

HEADER_LEN = 28
MAX_PAYLOADS = 128
_HDR = struct.Struct("!8s8sBBBBII")


# --- SA payload pieces -------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    type: int
    id: int
    keylen: int | None = None  # bits (attribute 14)
    other_attrs: tuple[tuple[int, bytes], ...] = ()  # (attr type, TLV value) kept verbatim

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.keylen is not None:
            attrs += struct.pack("!HH", 0x8000 | ATTR_KEY_LENGTH, self.keylen)
        for t, v in self.other_attrs:
            attrs += struct.pack("!HH", t & 0x7FFF, len(v)) + v
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


@dataclass(frozen=True)
class Proposal:
    num: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        n = 8 + len(self.spi) + len(body)
        hdr = struct.pack("!BBHBBBB", 0 if last else 2, 0, n, self.num, self.protocol, len(self.spi), len(self.transforms))
        return hdr + self.spi + body

    def of_type(self, ttype: int) -> list[Transform]:
        return [t for t in self.transforms if t.type == ttype]


def _decode_attrs(data: bytes) -> tuple[int | None, tuple[tuple[int, bytes], ...]]:
    keylen = None
    other: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ParseError("truncated transform attribute")
        atype, aval = struct.unpack_from("!HH", data, pos)
        if atype & 0x8000:
            if atype & 0x7FFF == ATTR_KEY_LENGTH:
                keylen = aval
            else:
                other.append((atype & 0x7FFF, aval.to_bytes(2, "big")))
            pos += 4
        else:
            if pos + 4 + aval > len(data):
                raise ParseError("transform attribute length exceeds transform")
            other.append((atype, data[pos + 4 : pos + 4 + aval]))
            pos += 4 + aval
    return keylen, tuple(other)


def _decode_proposals(data: bytes) -> list[Proposal]:
    out: list[Proposal] = []
    pos = 0
    more = True
    while more:
        if pos + 8 > len(data):
            raise ParseError("truncated proposal")
        last, _r, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", data, pos)
        if last not in (0, 2) or plen < 8 + spi_size or pos + plen > len(data):
            raise ParseError("bad proposal header")
        spi = data[pos + 8 : pos + 8 + spi_size]
        tpos, tend = pos + 8 + spi_size, pos + plen
        transforms: list[Transform] = []
        for i in range(ntrans):
            if tpos + 8 > tend:
                raise ParseError("truncated transform")
            tlast, _r, tlen, ttype, _r2, tid = struct.unpack_from("!BBHBBH", data, tpos)
            if tlen < 8 or tpos + tlen > tend or tlast != (0 if i == ntrans - 1 else 3):
                raise ParseError("bad transform header")
            keylen, other = _decode_attrs(data[tpos + 8 : tpos + tlen])
            transforms.append(Transform(ttype, tid, keylen, other))
            tpos += tlen
        if tpos != tend:
            raise ParseError("proposal length does not match its transforms")
        out.append(Proposal(num, proto, spi, tuple(transforms)))
        pos += plen
        more = last == 2
        if len(out) > MAX_PAYLOADS:
            raise ParseError("too many proposals")
    if pos != len(data):
        raise ParseError("trailing bytes after the last proposal")
    return out


# --- payloads ------------------------------------------------------------------------------------


@dataclass
class SA:
    proposals: list[Proposal]
    ptype: int = Payload.SA

    def body(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))


@dataclass
class KE:
    group: int
    data: bytes
    ptype: int = Payload.KE

    def body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data


@dataclass
class ID:
    ptype: int  # Payload.IDi or Payload.IDr
    id_type: int
    data: bytes

    def body(self) -> bytes:
        return bytes([self.id_type, 0, 0, 0]) + self.data


@dataclass
class Auth:
    method: int
    data: bytes
    ptype: int = Payload.AUTH

    def body(self) -> bytes:
        return bytes([self.method, 0, 0, 0]) + self.data


@dataclass
class Nonce:
    data: bytes
    ptype: int = Payload.NONCE

    def body(self) -> bytes:
        return self.data


@dataclass
class Notification:
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""
    ptype: int = Payload.NOTIFY

    def body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.type) + self.spi + self.data


@dataclass
class Delete:
    protocol: int
    spis: list[bytes] = field(default_factory=list)
    ptype: int = Payload.DELETE

    def body(self) -> bytes:
        size = 0 if self.protocol == 1 else 4
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)


@dataclass
class Vendor:
    data: bytes
    ptype: int = Payload.VENDOR

    def body(self) -> bytes:
        return self.data


@dataclass
class TS:
    ptype: int  # Payload.TSi or Payload.TSr
    selectors: list[TrafficSelector]

    def body(self) -> bytes:
        out = struct.pack("!B3x", len(self.selectors))
        for s in self.selectors:
            addr = s.start_addr.packed + s.end_addr.packed
            out += struct.pack("!BBHHH", s.ts_type, s.ip_proto, 8 + len(addr), s.start_port, s.end_port) + addr
        return out


@dataclass
class Cert:
    ptype: int  # Payload.CERT or Payload.CERTREQ
    encoding: int
    data: bytes

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data


@dataclass
class Unknown:
    """Any payload this codec does not interpret (CP, EAP, unknown types): kept as bytes."""

    ptype: int
    data: bytes
    critical: bool = False

    def body(self) -> bytes:
        return self.data


@dataclass
class SK:
    """The Encrypted payload as received: ``first_inner`` and IV | ciphertext | ICV."""

    first_inner: int
    data: bytes
    ptype: int = Payload.SK

    def body(self) -> bytes:
        return self.data


@dataclass
class SKF:
    """Encrypted Fragment (RFC 7383): fragment number and total, then IV | ciphertext | ICV."""

    first_inner: int
    number: int
    total: int
    data: bytes
    ptype: int = Payload.SKF

    def body(self) -> bytes:
        return struct.pack("!HH", self.number, self.total) + self.data


AnyPayload = Union[SA, KE, ID, Auth, Nonce, Notification, Delete, Vendor, TS, Cert, Unknown, SK, SKF]  # noqa: UP007


def _decode_ts(ptype: int, data: bytes) -> TS:
    if len(data) < 4:
        raise ParseError("truncated TS payload")
    n = data[0]
    pos = 4
    sels: list[TrafficSelector] = []
    for _ in range(n):
        if pos + 8 > len(data):
            raise ParseError("truncated traffic selector")
        ts_type, proto, slen, sp, ep = struct.unpack_from("!BBHHH", data, pos)
        # the length check comes first: an address built from a short slice raises AddressValueError
        if pos + slen > len(data):
            raise ParseError("traffic selector exceeds payload")
        a: ipaddress.IPv4Address | ipaddress.IPv6Address
        b: ipaddress.IPv4Address | ipaddress.IPv6Address
        if ts_type == TsType.IPV4_ADDR_RANGE and slen == 16:
            a, b = ipaddress.IPv4Address(data[pos + 8 : pos + 12]), ipaddress.IPv4Address(data[pos + 12 : pos + 16])
        elif ts_type == TsType.IPV6_ADDR_RANGE and slen == 40:
            a, b = ipaddress.IPv6Address(data[pos + 8 : pos + 24]), ipaddress.IPv6Address(data[pos + 24 : pos + 40])
        else:
            raise ParseError(f"unsupported traffic selector type {ts_type} / length {slen}")
        sels.append(TrafficSelector(a, b, proto, sp, ep))
        pos += slen
    if pos != len(data):
        raise ParseError("TS payload length does not match its selectors")
    return TS(ptype, sels)


def _decode_body(ptype: int, critical: bool, data: bytes, next_type: int) -> AnyPayload:
    def need(n: int) -> None:
        if len(data) < n:
            raise ParseError(f"payload {ptype} too short")

    if ptype == Payload.SA:
        return SA(_decode_proposals(data))
    if ptype == Payload.KE:
        need(4)
        return KE(int.from_bytes(data[:2], "big"), data[4:])
    if ptype in (Payload.IDi, Payload.IDr):
        need(4)
        return ID(ptype, data[0], data[4:])
    if ptype == Payload.AUTH:
        need(4)
        return Auth(data[0], data[4:])
    if ptype == Payload.NONCE:
        if not 16 <= len(data) <= 256:
            raise ParseError(f"nonce length {len(data)} outside 16..256")
        return Nonce(data)
    if ptype == Payload.NOTIFY:
        need(4)
        proto, spi_size, ntype = struct.unpack_from("!BBH", data)
        need(4 + spi_size)
        return Notification(ntype, data[4 + spi_size :], proto, data[4 : 4 + spi_size])
    if ptype == Payload.DELETE:
        need(4)
        proto, size, n = struct.unpack_from("!BBH", data)
        if len(data) != 4 + size * n or (proto == 1 and size != 0) or (proto in (2, 3) and size != 4):
            raise ParseError("bad Delete payload")
        return Delete(proto, [data[4 + i * size : 8 + i * size] for i in range(n)] if size else [])
    if ptype == Payload.VENDOR:
        return Vendor(data)
    if ptype in (Payload.TSi, Payload.TSr):
        return _decode_ts(ptype, data)
    if ptype in (Payload.CERT, Payload.CERTREQ):
        need(1)
        return Cert(ptype, data[0], data[1:])
    if ptype == Payload.SK:
        return SK(next_type, data)
    if ptype == Payload.SKF:
        need(4)
        num, total = struct.unpack_from("!HH", data)
        if num == 0 or total == 0 or num > total:
            raise ParseError("bad SKF fragment numbers")
        return SKF(next_type, num, total, data[4:])
    if ptype in (Payload.CP, Payload.EAP) or not critical:
        return Unknown(ptype, data, critical)
    raise ParseError(
        f"unsupported critical payload {ptype}", Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([ptype & 0xFF])
    )


def decode_payloads(first: int, data: bytes) -> list[AnyPayload]:
    """Decode a payload chain; SK/SKF must be last (their next-payload field names the inner one)."""
    out: list[AnyPayload] = []
    ptype, pos = first, 0
    while ptype != Payload.NONE:
        if len(out) >= MAX_PAYLOADS:
            raise ParseError("too many payloads")
        if pos + 4 > len(data):
            raise ParseError("truncated payload header")
        nxt, flags, plen = struct.unpack_from("!BBH", data, pos)
        if plen < 4 or pos + plen > len(data):
            raise ParseError("payload length exceeds message")
        p = _decode_body(ptype, bool(flags & 0x80), data[pos + 4 : pos + plen], nxt)
        out.append(p)
        pos += plen
        if ptype in (Payload.SK, Payload.SKF):
            break
        ptype = nxt
    if pos != len(data):
        raise ParseError("bytes left after the last payload")
    return out


def encode_payloads(payloads: list[AnyPayload], last_next: int = 0) -> bytes:
    out = bytearray()
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].ptype if i + 1 < len(payloads) else last_next
        body = p.body()
        crit = 0x80 if isinstance(p, Unknown) and p.critical else 0
        out += struct.pack("!BBH", nxt, crit, 4 + len(body)) + body
    return bytes(out)


# --- whole messages ------------------------------------------------------------------------------


@dataclass
class Message:
    spi_i: bytes
    spi_r: bytes
    exchange: int
    msg_id: int
    initiator: bool  # the I flag: sent by the original initiator of the IKE SA
    response: bool
    payloads: list[AnyPayload] = field(default_factory=list)
    version: int = 0x20
    decrypted: bool = False  # payloads are the inner ones already (a reassembled RFC 7383 message)

    @property
    def flags(self) -> int:
        return (Flags.INITIATOR if self.initiator else 0) | (Flags.RESPONSE if self.response else 0)

    def get(self, cls: type, ptype: int | None = None) -> list[Any]:
        return [p for p in self.payloads if isinstance(p, cls) and (ptype is None or p.ptype == ptype)]

    def first(self, cls: type, ptype: int | None = None) -> Any:  # an instance of cls, or None
        found = self.get(cls, ptype)
        return found[0] if found else None

    def notify(self, ntype: int) -> Notification | None:
        for p in self.payloads:
            if isinstance(p, Notification) and p.type == ntype:
                return p
        return None

    def header(self, first: int, length: int) -> bytes:
        return _HDR.pack(self.spi_i, self.spi_r, first, self.version, self.exchange, self.flags, self.msg_id, length)

    def encode(self) -> bytes:
        """Plain (unencrypted) encoding, e.g. IKE_SA_INIT."""
        body = encode_payloads(self.payloads)
        first = self.payloads[0].ptype if self.payloads else 0
        return self.header(first, HEADER_LEN + len(body)) + body

    def encode_encrypted(self, cipher: SkCipher, iv: bytes) -> bytes:
        """All payloads go inside one SK payload (RFC 7296 section 3.14)."""
        inner = encode_payloads(self.payloads)
        first = self.payloads[0].ptype if self.payloads else 0
        _pad, body_len = cipher.body_len(len(inner))
        sk_len = 4 + body_len
        assoc = self.header(Payload.SK, HEADER_LEN + sk_len) + struct.pack("!BBH", first, 0, sk_len)
        return assoc + cipher.seal(assoc, inner, iv)

    def __repr__(self) -> str:
        names = []
        for p in self.payloads:
            n = Payload(p.ptype).name if p.ptype in Payload._value2member_map_ else str(p.ptype)
            if isinstance(p, Notification):
                n += f"({Notify(p.type).name if p.type in Notify._value2member_map_ else p.type})"
            names.append(n)
        ex = Exchange(self.exchange).name if self.exchange in Exchange._value2member_map_ else self.exchange
        kind = "response" if self.response else "request"
        return f"<{ex} {kind} #{self.msg_id} [{' '.join(names)}]>"


def decode_header(data: bytes) -> Message:
    """Decode and check the IKE header only (payloads are not touched)."""
    if len(data) < HEADER_LEN:
        raise ParseError("shorter than an IKE header")
    spi_i, spi_r, _first, version, exch, flags, msg_id, length = _HDR.unpack_from(data)
    if version >> 4 != 2:
        raise ParseError(f"IKE major version {version >> 4}", Notify.INVALID_MAJOR_VERSION)
    if length != len(data):
        raise ParseError(f"IKE length field {length} != datagram length {len(data)}")
    return Message(spi_i, spi_r, exch, msg_id, bool(flags & Flags.INITIATOR), bool(flags & Flags.RESPONSE), [], version)


def decode_message(data: bytes) -> Message:
    """Header plus the outer payload chain (an SK payload stays encrypted: see ``decrypt``)."""
    msg = decode_header(data)
    msg.payloads = decode_payloads(data[16], data[HEADER_LEN:])
    return msg


def decrypt(msg: Message, data: bytes, cipher: SkCipher) -> list[AnyPayload]:
    """Verify and decrypt the SK payload of ``msg`` (decoded from ``data``); return the inner
    payloads.  Raises IntegrityError (drop silently) or ParseError."""
    sk = msg.payloads[-1] if msg.payloads else None
    if not isinstance(sk, SK):
        raise ParseError("message has no Encrypted payload")
    body_start = len(data) - len(sk.data)
    inner = cipher.open(data[:body_start], sk.data)
    return decode_payloads(sk.first_inner, inner)


def build_identity(id_type: int, value: str | bytes) -> bytes:
    """Identification data for an ID payload from a user-facing value."""
    if isinstance(value, bytes):
        return value
    if id_type in (1, 5):
        addr = ipaddress.ip_address(value)
        if addr.version != (4 if id_type == 1 else 6):
            raise LocalProtocolError(f"identity {value!r} does not match ID type {id_type}")
        return addr.packed
    if id_type == 11:
        return bytes.fromhex(value.removeprefix("0x")) if value.startswith("0x") else value.encode()
    return value.encode()
