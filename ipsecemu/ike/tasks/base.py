"""Shared pieces of the IKE SA and its tasks: wire <-> proposal conversion, NAT-D hashes, the
records an SA keeps (Child SAs, outstanding requests) and the sink it writes to."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import crypto
from .. import message as m
from ..consts import Notify
from ..errors import RemoteProtocolError
from ..events import (
    ChildSaKeys,
    Event,
)
from ..proposals import PROTOCOL_IDS, Proposal, Transform
from ..transforms import TransformType
from ..ts import TrafficSelector

Addr = tuple[str, int]
Rng = Callable[[int], bytes]
KEY_PAD = b"Key Pad for IKEv2"
NATT_PORT = 4500


# --- helpers -------------------------------------------------------------------------------------


def natd_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    """RFC 7296 section 2.23: SHA-1(SPIi | SPIr | IP | Port)."""
    ip = ipaddress.ip_address(addr[0]).packed
    return hashlib.sha1(spi_i + spi_r + ip + addr[1].to_bytes(2, "big")).digest()


def to_wire(props: list[Proposal], spi: bytes) -> list[m.Proposal]:
    out = []
    for n, p in enumerate(props, 1):
        ts = tuple(m.Transform(t.type, t.id, t.key_length) for t in p.transforms)
        out.append(m.Proposal(p.number or n, PROTOCOL_IDS[p.protocol], spi, ts))
    return out


def from_wire(props: list[m.Proposal]) -> list[Proposal]:
    """Wire proposals -> ``proposals.Proposal`` (AH and odd protocols are skipped: we never pick them)."""
    names = {v: k for k, v in PROTOCOL_IDS.items()}
    out = []
    for p in props:
        if p.protocol not in names:
            continue
        # a transform with attributes we do not understand can never match one of ours
        ts = tuple(Transform(t.type, t.id, t.keylen) if not t.other_attrs else Transform(t.type, 0xFFFF)
                   for t in p.transforms)
        out.append(Proposal(names[p.protocol], ts, p.num, p.spi))
    return out


def _first_group(props: list[Proposal]) -> int:
    for p in props:
        for t in p.of_type(TransformType.KE):
            if t.id:
                return t.id
    return 0


def _groups(props: list[Proposal]) -> list[int]:
    return [t.id for p in props for t in p.of_type(TransformType.KE) if t.id]


def _ike_suite(p: Proposal) -> tuple[int, int | None, int, int | None]:
    """(encr id, key bits, prf id, integ id) of a selected IKE proposal."""
    if p.encr is None or p.prf is None:
        raise RemoteProtocolError("IKE proposal without encryption or PRF", Notify.NO_PROPOSAL_CHOSEN)
    integ = p.integ.id if p.integ is not None else None
    return p.encr.id, p.encr.key_bits, p.prf.id, integ


@dataclass
class Sink:
    """Where an IKE SA puts what it produces; an IkeEndpoint shares one among its SAs."""

    out: list[tuple[bytes, Addr, Addr]] = field(default_factory=list)
    events: deque[Event] = field(default_factory=deque)
    new_sas: list[Any] = field(default_factory=list)  # IkeSa objects born from a rekey
    # what the SAs counted, summed as "sa_<name>": it outlives each SA (a collision's counts are on
    # the old SA, gone a round trip later); an IkeEndpoint passes its own counters here
    totals: dict[str, int] = field(default_factory=dict)


@dataclass
class ChildSa:
    inbound_spi: int
    outbound_spi: int
    keys: ChildSaKeys
    created: float
    rekey_at: float | None
    expire_at: float | None
    rekeyed: bool = False  # replaced by a newer SA; waiting for the delete
    expire_cap: float | None = None  # set when an owed rekey first pushed the hard lifetime back


@dataclass
class _Request:
    msg_id: int
    wire: bytes
    exchange: int
    on_response: Callable[[m.Message, float], None]
    kind: str
    tries: int = 0
    next_at: float = 0.0
    started: float = 0.0
    frags: list[bytes] = field(default_factory=list)  # RFC 7383 fragments of ``wire`` (sent instead)


@dataclass
class _ChildNeg:
    """An outstanding Child SA negotiation that we initiated."""

    inbound_spi: int
    nonce: bytes
    ke: crypto.KeyExchange | None
    proposals: list[Proposal]
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    rekey_of: ChildSa | None = None
    # simultaneous rekey (RFC 7296 section 2.8.1): the peer's new SA and the lowest nonce of its exchange
    collision: tuple[ChildSa, bytes] | None = None


def _strip_ke(props: list[Proposal]) -> list[Proposal]:
    """Proposals without KE transforms (for the Child SA inside IKE_AUTH)."""
    return [Proposal(p.protocol, tuple(t for t in p.transforms if t.type != TransformType.KE), p.number, p.spi)
            for p in props]


def _eq(a: bytes, b: bytes) -> bool:

    return hmac.compare_digest(a, b)
