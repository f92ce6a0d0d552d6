"""The IKEv2 SA object: a sans-I/O state machine (RFC 7296).  No sockets, no clock, no randomness.

API (stable; the asyncio transport in ``ipsecemu.io`` codes against this)
--------------------------------------------------------------------------

Addresses are ``(host: str, port: int)`` tuples.  ``now`` is a float in seconds (any monotonic
clock the caller likes).  Randomness (SPIs, nonces, DH private keys, IVs, rekey jitter) comes from
``rng: Callable[[int], bytes]`` (default ``os.urandom``) so runs and published vectors reproduce.

``IkeEndpoint(configs, local, *, rng=os.urandom, cookie_threshold=10)`` (``ipsecemu.ike.endpoint``,
also importable from here) -- what a transport drives.  ``configs`` are ``settings.IkeSaConfig``
(``ike.config.to_ike_sa_config`` builds them from YAML).  It owns every IKE SA of one local
address; routes datagrams by SPI; answers IKE_SA_INIT requests (responder role: the config
naming the peer address / matching the offered IKE proposal, switched in IKE_AUTH by the peer's
identity); sends stateless COOKIEs once ``cookie_threshold`` SAs are half-open.
    * ``receive_datagram(data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None``
      ``data`` is the IKE message *without* the 4-byte non-ESP marker (the transport strips it on
      port 4500 and drops 1-byte 0xFF keepalives).  ``local`` is the address the datagram arrived
      on -- it must be the real address, not 0.0.0.0, because NAT detection hashes it.  Bad input
      never raises; it is counted in ``counters`` (endpoint and per SA) and, where RFC 7296 says
      so, answered with a notify.
    * ``datagrams_to_send(now) -> list[tuple[bytes, Addr, Addr]]``: ``(data, remote, local)``.
      ``local`` tells the transport which socket to use; its port is 4500 once NAT-T floated
      (prepend the non-ESP marker then).
    * ``get_timer() -> float | None``: the earliest time ``handle_timer`` must be called.
    * ``handle_timer(now) -> None``: retransmissions, DPD, half-open timeouts, timed rekeys/expiry.
    * ``next_event() -> Event | None``: events from ``ipsecemu.ike.events``, in order.
    * ``initiate(name, now, remote: Addr | None = None) -> IkeSa``: start an IKE SA for config
      ``name`` (IKE_SA_INIT + IKE_AUTH carrying the first Child SA).
    * ``sas``: dict our SPI -> ``IkeSa`` (rekeyed SAs replace their predecessor); ``find(spi)``;
      ``counters``: dict of drop reasons.

``IkeSa`` -- one IKE SA (either role); usable alone with the same five driving calls plus the
API calls ``initiate(now)``, ``rekey_child(inbound_spi, now)``, ``create_child(now, local_ts,
remote_ts)``, ``delete_child(inbound_spi, now)``, ``rekey_ike(now)``, ``delete(now)``, ``dpd(now)``.
Requests queue behind each other (window size 1).  Attributes: ``state`` (``states.IkeState``),
``spi_i``, ``spi_r``, ``initiator`` (original role), ``children`` (inbound SPI -> ``ChildSa``),
``nat_local`` / ``nat_remote`` / ``encap``, ``local`` / ``remote`` (current addresses),
``keys`` (``crypto.IkeKeys``: SK_d, SK_ai ... with a redacting repr), ``successor`` (after a rekey),
``counters``.

Events (``ipsecemu.ike.events``), frozen dataclasses carrying ``ike_spi_i``/``ike_spi_r``:
    ``IkeSaEstablished`` (ids, proposal, addresses, NAT flags), ``NatDetected``,
    ``IkeSaRekeyed`` (new SPIs; Child SAs move over silently), ``IkeSaDeleted`` (``reason``:
    "local", "remote", "dpd", "timeout", "auth_failed", "no_proposal", "failed", "rekeyed"; plus
    the error ``notify``), ``ChildSaEstablished`` / ``ChildSaRekeyed`` (the new SA is complete
    *before* the old one's ``ChildSaDeleted``: make-before-break) carrying ``ChildSaKeys``:
    ``inbound`` / ``outbound`` ``ipsecemu.dataplane.api.EspSaConfig`` (``encr`` like "aes-gcm-16",
    ``enc_key`` including the 4-byte salt, ``integ`` like "hmac-sha256-128" or None, byte/packet
    ``lifetime``), ``local_ts``/``remote_ts``, ``mode``, ``encap``, outer ``local``/``remote``,
    ``lifetime_s``, ``proposal``; ``ChildSaDeleted`` (SPIs, ``reason``: "local", "remote",
    "rekeyed", "redundant" for the loser of a simultaneous rekey); ``ChildSaFailed`` (a Child SA
    was refused -- the IKE SA stays up); ``PeerAddressChanged`` (a NATed peer moved: send IKE and
    ESP to the new ``remote``).

Errors (``ipsecemu.ike.errors``): ``LocalProtocolError`` for caller misuse (raised from API calls),
``RemoteProtocolError`` for a misbehaving peer (never escapes the driving calls; carries the
notify to answer with).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ipsecemu.dataplane.api import ConfigError, EspSaConfig, Lifetime

from . import crypto
from . import message as m
from .consts import STATUS_NOTIFY_MIN, AuthMethod, Exchange, Notify, Payload, Protocol
from .errors import IntegrityError, LocalProtocolError, ParseError, RemoteProtocolError
from .events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaKeys,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    NatDetected,
    PeerAddressChanged,
)
from .proposals import PROTOCOL_IDS, Proposal, Transform, check_selected, select
from .settings import Identity, IkeSaConfig
from .states import IkeState, check
from .transforms import TransformType
from .ts import TrafficSelector, narrow

Addr = tuple[str, int]
Rng = Callable[[int], bytes]
KEY_PAD = b"Key Pad for IKEv2"
NATT_PORT = 4500

__all__ = ["IkeSa", "ChildSa", "Sink", "IkeState", "natd_hash", "to_wire", "from_wire"]


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
    new_sas: list[IkeSa] = field(default_factory=list)


@dataclass
class ChildSa:
    inbound_spi: int
    outbound_spi: int
    keys: ChildSaKeys
    created: float
    rekey_at: float | None
    expire_at: float | None
    rekeyed: bool = False  # replaced by a newer SA; waiting for the delete


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


class IkeSa:
    """One IKE SA; see the module docstring for the driving API."""

    def __init__(
        self,
        config: IkeSaConfig,
        *,
        initiator: bool,
        local: Addr,
        remote: Addr | None = None,
        rng: Rng | None = None,
        sink: Sink | None = None,
        config_lookup: Callable[[Identity, Identity | None], IkeSaConfig | None] | None = None,
    ) -> None:
        self.config = config
        self.initiator = initiator
        self.local = local
        remote = remote or config.remote_addr
        if remote is None:
            raise LocalProtocolError(f"{config.name}: no remote address")
        self.remote = remote
        self._rng: Rng = rng or os.urandom
        self._sink = sink or Sink()
        self._config_lookup = config_lookup
        self.state = IkeState.INITIAL
        self.spi_i = self._rng(8) if initiator else b""
        self.spi_r = bytes(8) if initiator else self._rng(8)
        self.ni = b""
        self.nr = b""
        self._ke: crypto.KeyExchange | None = None
        self._group = _first_group(config.ike_proposals)
        self._tried_groups: set[int] = set()
        self._cookie = b""
        self.proposal: Proposal | None = None
        self.keys: crypto.IkeKeys | None = None
        self._prf_id = 0
        self._cin: crypto.SkCipher | None = None
        self._cout: crypto.SkCipher | None = None
        self._init_req = b""  # IKE_SA_INIT request / response as sent (for AUTH)
        self._init_resp = b""
        self.nat_local = False
        self.nat_remote = False
        self.remote_id: Identity | None = None
        self.children: dict[int, ChildSa] = {}
        self._first_child: _ChildNeg | None = None
        # message IDs (window size 1)
        self._next_id = 0
        self._expect_id = 0
        self._pending: _Request | None = None
        self._queue: deque[tuple[str, Callable[[float], None]]] = deque()
        self._last_response: tuple[int, list[tuple[bytes, Addr, Addr]]] | None = None
        self._created = 0.0
        self._last_recv = 0.0
        self._ike_rekey_at: float | None = None
        self._half_open_deadline: float | None = None
        self.counters: dict[str, int] = {}
        self.successor: IkeSa | None = None
        self._rekeying_ike = False
        self._child_neg: _ChildNeg | None = None  # our CREATE_CHILD_SA in flight
        # Deletes for outbound SPIs we do not know yet, received while our CREATE_CHILD_SA was in
        # flight: the peer answered it (response lost or late) and already deleted the result
        self._early_deletes: set[int] = set()
        self.peer_initial_contact = False  # the peer said INITIAL_CONTACT: its older SAs are stale
        self.last_error = ""  # the last peer protocol error (for logs; never contains key material)

    # --- driving API ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None:
        try:
            msg = m.decode_header(data)
        except ParseError:
            self._count("parse_error")
            return
        self.receive_message(msg, data, addr, now, local)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        out, self._sink.out = self._sink.out, []
        return out

    def next_event(self) -> Event | None:
        return self._sink.events.popleft() if self._sink.events else None

    def get_timer(self) -> float | None:
        if self.state == IkeState.CLOSED:
            return None
        times = []
        if self._pending is not None:
            times.append(self._pending.next_at)
            dpd_timeout = float(self.config.extra.get("dpd_timeout_s", 0) or 0)
            if self._pending.kind == "dpd" and dpd_timeout:
                times.append(self._pending.started + dpd_timeout)
        if self._half_open_deadline is not None:
            times.append(self._half_open_deadline)
        if self.state == IkeState.ESTABLISHED and self._pending is None:
            if self.config.dpd_delay_s > 0:
                times.append(self._last_recv + self.config.dpd_delay_s)
            if self._ike_rekey_at is not None and not self._rekeying_ike:
                times.append(self._ike_rekey_at)
            for c in self.children.values():
                if c.rekey_at is not None and not c.rekeyed:
                    times.append(c.rekey_at)
                if c.expire_at is not None:
                    times.append(c.expire_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state == IkeState.CLOSED:
            return
        if self._half_open_deadline is not None and now >= self._half_open_deadline:
            self._close(now, "timeout")
            return
        p = self._pending
        dpd_timeout = float(self.config.extra.get("dpd_timeout_s", 0) or 0)
        if p is not None and p.kind == "dpd" and dpd_timeout and now >= p.started + dpd_timeout:
            self._close(now, "dpd")  # e.g. Azure: peer declared dead after 45 s without an answer
            return
        if p is not None and now >= p.next_at:
            if p.tries >= self.config.retransmit_tries:
                self._close(now, "dpd" if p.kind == "dpd" else "timeout")
                return
            p.tries += 1
            p.next_at = now + self.config.retransmit_timeout_s * self.config.retransmit_base**p.tries
            self._emit(p.wire)
            self._count("retransmit")
            return
        if self.state != IkeState.ESTABLISHED or self._pending is not None:
            return
        for c in list(self.children.values()):
            if c.expire_at is not None and now >= c.expire_at:
                self.delete_child(c.inbound_spi, now)
            elif c.rekey_at is not None and now >= c.rekey_at and not c.rekeyed:
                c.rekey_at = None
                self.rekey_child(c.inbound_spi, now)
        if self._ike_rekey_at is not None and now >= self._ike_rekey_at and not self._rekeying_ike:
            self._ike_rekey_at = None
            self.rekey_ike(now)
        if self.config.dpd_delay_s > 0 and now >= self._last_recv + self.config.dpd_delay_s and not self._queue:
            self.dpd(now)

    # --- API calls ------------------------------------------------------------------------------

    def initiate(self, now: float) -> None:
        if not self.initiator or self.state != IkeState.INITIAL:
            raise LocalProtocolError(f"initiate() in state {self.state.value} (initiator={self.initiator})")
        self._created = now
        self._first_child = _ChildNeg(
            self._alloc_child_spi(), b"", None, self.config.esp_proposals,
            list(self.config.local_ts), list(self.config.remote_ts),
        )
        self._send_sa_init(now)

    def rekey_child(self, inbound_spi: int, now: float) -> None:
        child = self._child(inbound_spi)
        self._enqueue("rekey_child", lambda t: self._start_create_child(t, child))
        self._kick(now)

    def create_child(self, now: float, local_ts: list[TrafficSelector] | None = None,
                     remote_ts: list[TrafficSelector] | None = None) -> None:
        """An additional Child SA (CREATE_CHILD_SA) for the given (or configured) selectors."""
        self._require_established()
        self._enqueue("create_child", lambda t: self._start_create_child(t, None, local_ts, remote_ts))
        self._kick(now)

    def delete_child(self, inbound_spi: int, now: float) -> None:
        self._child(inbound_spi)
        self._enqueue("delete_child", lambda t: self._start_delete_child(t, inbound_spi))
        self._kick(now)

    def rekey_ike(self, now: float) -> None:
        self._require_established()
        self._enqueue("rekey_ike", self._start_rekey_ike)
        self._kick(now)

    def delete(self, now: float) -> None:
        if self.state == IkeState.CLOSED:
            return
        if self.state != IkeState.ESTABLISHED:
            self._close(now, "local")  # nothing to tell the peer yet
            return
        self._queue.clear()
        self._enqueue("delete", self._start_delete_ike)
        self._kick(now)

    def dpd(self, now: float) -> None:
        self._require_established()
        self._enqueue("dpd", lambda t: self._send_request(t, Exchange.INFORMATIONAL, [], lambda r, t2: None, "dpd"))
        self._kick(now)

    # --- properties -----------------------------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def encap(self) -> bool:
        return self.nat_local or self.nat_remote or self.config.force_encap

    def __repr__(self) -> str:
        return (f"<IkeSa {self.config.name} {self.spi_i.hex()}_i {self.spi_r.hex()}_r "
                f"{'I' if self.initiator else 'R'} {self.state.value}>")

    # --- internals: plumbing --------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _set_state(self, new: IkeState) -> None:
        if new != self.state:
            check(self.state, new)
            self.state = new

    def _event(self, ev_cls: type, **kw: object) -> None:
        self._sink.events.append(ev_cls(ike_spi_i=self.spi_i, ike_spi_r=self.spi_r, **kw))

    def _emit(self, wire: bytes) -> None:
        self._sink.out.append((wire, self.remote, self.local))

    def _require_established(self) -> None:
        if self.state != IkeState.ESTABLISHED:
            raise LocalProtocolError(f"IKE SA {self.config.name} is {self.state.value}, not established")

    def _child(self, inbound_spi: int) -> ChildSa:
        self._require_established()
        c = self.children.get(inbound_spi)
        if c is None:
            raise LocalProtocolError(f"no Child SA with inbound SPI {inbound_spi:#x}")
        return c

    def _enqueue(self, kind: str, start: Callable[[float], None]) -> None:
        self._queue.append((kind, start))

    def _kick(self, now: float) -> None:
        """Start the next queued request if the window (size 1) is free."""
        while self._pending is None and self._queue and self.state in (IkeState.ESTABLISHED, IkeState.DELETING):
            _kind, start = self._queue.popleft()
            start(now)

    def _alloc_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._rng(4), "big")
            if spi >= 256 and spi not in self.children:
                return spi

    def _nonce(self) -> bytes:
        return self._rng(32)

    def _encrypt(self, msg: m.Message) -> bytes:
        assert self._cout is not None
        return msg.encode_encrypted(self._cout, self._rng(self._cout.encr.iv_len))

    def _send_request(self, now: float, exchange: int, payloads: list, on_response: Callable[[m.Message, float], None],
                      kind: str) -> None:
        msg = m.Message(self.spi_i, self.spi_r, exchange, self._next_id, self.initiator, False, payloads)
        wire = self._encrypt(msg)
        self._pending = _Request(self._next_id, wire, exchange, on_response, kind, 0,
                                 now + self.config.retransmit_timeout_s, now)
        self._emit(wire)

    def _send_response(self, req: m.Message, payloads: list, addr: Addr, local: Addr) -> None:
        msg = m.Message(self.spi_i, self.spi_r, req.exchange, req.msg_id, self.initiator, True, payloads)
        wire = self._encrypt(msg)
        self._sink.out.append((wire, addr, local))
        self._last_response = (req.msg_id, [(wire, addr, local)])

    def _close(self, now: float, reason: str, notify: int = 0, quiet_children: bool = False) -> None:
        if self.state == IkeState.CLOSED:
            return
        if not quiet_children:
            for c in self.children.values():
                self._event(ChildSaDeleted, inbound_spi=c.inbound_spi, outbound_spi=c.outbound_spi, reason=reason)
        self.children.clear()
        self._pending = None
        self._queue.clear()
        self._half_open_deadline = None
        self.state = IkeState.CLOSED
        self._event(IkeSaDeleted, reason=reason, notify=notify)

    def close_replaced(self, now: float) -> None:
        """Forget this SA without telling the peer (it rebooted: RFC 7296 section 2.4 INITIAL_CONTACT)."""
        self._close(now, "replaced")

    # --- receiving --------------------------------------------------------------------------------

    def receive_message(self, msg: m.Message, data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None:
        """A datagram whose header is already decoded (the endpoint routes by SPI)."""
        local = local or self.local
        if self.state == IkeState.CLOSED:
            self._count("closed")
            return
        try:
            if msg.exchange == Exchange.IKE_SA_INIT:
                self._recv_sa_init(msg, data, addr, local, now)
            elif msg.response:
                self._recv_response(msg, data, addr, now)
            else:
                self._recv_request(msg, data, addr, local, now)
        except IntegrityError:
            self._count("integrity")
        except RemoteProtocolError as exc:
            self._count("protocol_error")
            self.last_error = str(exc)

    def _decrypt(self, msg: m.Message, data: bytes) -> list:
        if self._cin is None:
            raise RemoteProtocolError("encrypted message before keys exist")
        try:
            msg.payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
        except ParseError:
            # an unauthenticated message cannot earn a notify from us
            raise IntegrityError("malformed outer payloads") from None
        inner = m.decrypt(msg, data, self._cin)
        msg.payloads = inner
        return inner

    def _recv_response(self, msg: m.Message, data: bytes, addr: Addr, now: float) -> None:
        p = self._pending
        if msg.initiator == self.initiator:
            self._count("bad_flags")
            return
        if p is None or msg.msg_id != p.msg_id or msg.exchange != p.exchange:
            self._count("unexpected_response")
            return
        self._decrypt(msg, data)
        self._last_recv = now
        self._pending = None
        self._next_id += 1
        self._follow_peer(addr)
        p.on_response(msg, now)
        self._kick(now)

    def _follow_peer(self, addr: Addr) -> None:
        """RFC 7296 section 2.23: a peer behind a NAT may change its address/port (NAT rebinding);
        follow it on every authenticated message, and tell the data plane."""
        if self.state == IkeState.ESTABLISHED and self.nat_remote and addr != self.remote:
            self.remote = addr
            self._event(PeerAddressChanged, local=self.local, remote=addr)

    def _recv_request(self, msg: m.Message, data: bytes, addr: Addr, local: Addr, now: float) -> None:
        if msg.initiator == self.initiator:
            self._count("bad_flags")
            return
        if self._last_response is not None and msg.msg_id == self._last_response[0]:
            # a retransmitted request: answer from the cache after checking it is authentic
            self._decrypt(msg, data)
            self._sink.out.extend(self._last_response[1])
            self._count("duplicate_request")
            return
        if msg.msg_id != self._expect_id:
            self._count("bad_message_id")
            return
        try:
            self._decrypt(msg, data)
        except RemoteProtocolError as exc:
            if isinstance(exc, IntegrityError) or not exc.notify:
                raise
            self._expect_id += 1
            self._send_response(msg, [m.Notification(exc.notify, exc.notify_data)], addr, local)
            return
        self._last_recv = now
        self._expect_id += 1
        self._follow_peer(addr)
        crit = [p for p in msg.payloads if isinstance(p, m.Unknown) and p.critical]
        if crit:
            self._send_response(msg, [m.Notification(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([crit[0].ptype]))],
                                addr, local)
            return
        try:
            if msg.exchange == Exchange.IKE_AUTH:
                self._recv_auth_request(msg, addr, local, now)
            elif self.state not in (IkeState.ESTABLISHED, IkeState.DELETING):
                self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            elif msg.exchange == Exchange.INFORMATIONAL:
                self._recv_informational(msg, addr, local, now)
            elif msg.exchange == Exchange.CREATE_CHILD_SA:
                self._recv_create_child(msg, addr, local, now)
            else:
                self._count("unknown_exchange")
                self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
        except RemoteProtocolError as exc:
            # an authenticated but unusable request (bad KE value, odd SPI sizes...): every request
            # gets an answer, or the peer retransmits into a message ID we have moved past
            self._count("protocol_error")
            self.last_error = str(exc)
            if self.state != IkeState.CLOSED and (self._last_response is None or self._last_response[0] != msg.msg_id):
                self._send_response(msg, [m.Notification(exc.notify or Notify.INVALID_SYNTAX, exc.notify_data)],
                                    addr, local)
        self._kick(now)

    # --- IKE_SA_INIT ------------------------------------------------------------------------------

    def _natd_payloads(self, spi_r: bytes, local: Addr, remote: Addr) -> list:
        src = natd_hash(self.spi_i, spi_r, local)
        if self.config.force_encap:
            # like strongSwan's encap=yes: a hash that cannot match makes both sides float to 4500
            src = hashlib.sha1(b"force-encap" + self._rng(8)).digest()
        return [
            m.Notification(Notify.NAT_DETECTION_SOURCE_IP, src),
            m.Notification(Notify.NAT_DETECTION_DESTINATION_IP, natd_hash(self.spi_i, spi_r, remote)),
        ]

    def _check_natd(self, msg: m.Message, spi_r: bytes, addr: Addr, local: Addr) -> None:
        src = [n.data for n in msg.get(m.Notification) if n.type == Notify.NAT_DETECTION_SOURCE_IP]
        dst = [n.data for n in msg.get(m.Notification) if n.type == Notify.NAT_DETECTION_DESTINATION_IP]
        if not src or not dst:
            return  # the peer does not do NAT-T
        self.nat_remote = natd_hash(self.spi_i, spi_r, addr) not in src
        self.nat_local = natd_hash(self.spi_i, spi_r, local) not in dst

    def _send_sa_init(self, now: float) -> None:
        if self._ke is None or self._ke.group != self._group:
            self._ke = crypto.KeyExchange(self._group, self._rng)
        if not self.ni:
            self.ni = self._nonce()
        payloads: list = [m.Notification(Notify.COOKIE, self._cookie)] if self._cookie else []
        payloads += [
            m.SA(to_wire(self.config.ike_proposals, b"")),
            m.KE(self._group, self._ke.public),
            m.Nonce(self.ni),
            *self._natd_payloads(bytes(8), self.local, self.remote),
        ]
        wire = m.Message(self.spi_i, bytes(8), Exchange.IKE_SA_INIT, 0, True, False, payloads).encode()
        self._init_req = wire
        self._pending = _Request(0, wire, Exchange.IKE_SA_INIT, lambda r, t: None, "sa_init", 0,
                                 now + self.config.retransmit_timeout_s)
        self._set_state(IkeState.SA_INIT_SENT)
        self._emit(wire)

    def _send_plain(self, msg: m.Message, addr: Addr, local: Addr) -> bytes:
        wire = msg.encode()
        self._sink.out.append((wire, addr, local))
        return wire

    def _discard(self) -> None:
        """Forget a responder SA that never got past IKE_SA_INIT (no event: nothing existed)."""
        self.state = IkeState.CLOSED
        self._half_open_deadline = None

    def _recv_sa_init(self, msg: m.Message, data: bytes, addr: Addr, local: Addr, now: float) -> None:
        if msg.msg_id != 0:
            self._count("bad_message_id")
            return
        if msg.response:
            if not self.initiator or self.state != IkeState.SA_INIT_SENT or msg.initiator:
                self._count("unexpected_response")
                return
            msg.payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
            self._on_sa_init_response(msg, data, addr, local, now)
            return
        if self.initiator:
            self._count("unexpected_request")
        elif self.state == IkeState.SA_INIT_DONE and data == self._init_req:
            self._sink.out.append((self._init_resp, addr, local))  # retransmitted request
            self._count("duplicate_request")
        elif self.state == IkeState.INITIAL:
            self._on_sa_init_request(msg, data, addr, local, now)
        else:
            self._count("unexpected_request")

    def _on_sa_init_response(self, msg: m.Message, data: bytes, addr: Addr, local: Addr, now: float) -> None:
        cookie = msg.notify(Notify.COOKIE)
        if cookie is not None:
            if self._cookie:  # a second cookie demand: the responder is not playing along
                self._close(now, "failed", Notify.COOKIE)
                return
            self._cookie = cookie.data
            self._send_sa_init(now)
            return
        bad_ke = msg.notify(Notify.INVALID_KE_PAYLOAD)
        if bad_ke is not None:
            want = int.from_bytes(bad_ke.data[:2], "big") if len(bad_ke.data) >= 2 else 0
            self._tried_groups.add(self._group)
            if want in _groups(self.config.ike_proposals) and want not in self._tried_groups:
                self._group = want
                self._send_sa_init(now)
            else:
                self._close(now, "no_proposal", Notify.INVALID_KE_PAYLOAD)
            return
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if errors:
            t = errors[0].type
            self._close(now, "no_proposal" if t == Notify.NO_PROPOSAL_CHOSEN else "failed", t)
            return
        sa, ke, nonce = msg.first(m.SA), msg.first(m.KE), msg.first(m.Nonce)
        props = from_wire(sa.proposals) if sa else []
        if not (sa and ke and nonce) or len(props) != 1 or not check_selected(self.config.ike_proposals, props[0]):
            self._close(now, "failed", Notify.INVALID_SYNTAX)
            return
        chosen = props[0]
        if chosen.ke is None or chosen.ke.id != self._group or ke.group != self._group:
            self._close(now, "failed", Notify.INVALID_KE_PAYLOAD)
            return
        self.spi_r = msg.spi_r
        self.nr = nonce.data
        self._init_resp = data
        self.proposal = chosen
        assert self._ke is not None
        try:
            gir = self._ke.shared_secret(ke.data)
        except RemoteProtocolError as exc:
            self._close(now, "failed", exc.notify)
            return
        self._derive_keys(gir)
        self._check_natd(msg, self.spi_r, addr, local)
        if self.encap:
            self._float(addr, local)
        self._pending = None
        self._next_id = 1
        self._send_auth_request(now)

    def _float(self, addr: Addr, local: Addr) -> None:
        """RFC 7296 section 2.23: move IKE (and ESP) to port 4500."""
        self.local = (local[0], NATT_PORT)
        self.remote = (addr[0], NATT_PORT if addr[1] == 500 else addr[1])

    def _on_sa_init_request(self, msg: m.Message, data: bytes, addr: Addr, local: Addr, now: float) -> None:
        self.spi_i = msg.spi_i
        self.remote, self.local = addr, local
        try:
            msg.payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
        except ParseError as exc:
            if exc.notify == Notify.UNSUPPORTED_CRITICAL_PAYLOAD:
                self._send_plain(m.Message(self.spi_i, bytes(8), Exchange.IKE_SA_INIT, 0, False, True,
                                           [m.Notification(exc.notify, exc.notify_data)]), addr, local)
            self._count("parse_error")
            self._discard()
            return
        sa, ke, nonce = msg.first(m.SA), msg.first(m.KE), msg.first(m.Nonce)
        if not (sa and ke and nonce):
            self._count("missing_payload")
            self._discard()
            return

        def refuse(notify: int, data: bytes = b"") -> None:
            self._send_plain(m.Message(self.spi_i, bytes(8), Exchange.IKE_SA_INIT, 0, False, True,
                                       [m.Notification(notify, data)]), addr, local)
            self._count("refused")
            self._discard()

        chosen = select(self.config.ike_proposals, [p for p in from_wire(sa.proposals) if p.protocol == "ike"])
        if chosen is None or chosen.ke is None:
            refuse(Notify.NO_PROPOSAL_CHOSEN)
            return
        group = chosen.ke.id
        if ke.group != group:
            refuse(Notify.INVALID_KE_PAYLOAD, group.to_bytes(2, "big"))
            return
        self._ke = crypto.KeyExchange(group, self._rng)
        try:
            gir = self._ke.shared_secret(ke.data)
        except RemoteProtocolError:
            refuse(Notify.INVALID_SYNTAX)
            return
        self.proposal = chosen
        self._group = group
        self.ni, self.nr = nonce.data, self._nonce()
        self._check_natd(msg, bytes(8), addr, local)
        payloads = [
            m.SA(to_wire([chosen], b"")),
            m.KE(group, self._ke.public),
            m.Nonce(self.nr),
            *self._natd_payloads(self.spi_r, local, addr),
        ]
        self._init_req = data
        self._init_resp = self._send_plain(
            m.Message(self.spi_i, self.spi_r, Exchange.IKE_SA_INIT, 0, False, True, payloads), addr, local)
        self._derive_keys(gir)
        self._created = now
        self._expect_id = 1
        self._set_state(IkeState.SA_INIT_DONE)
        self._half_open_deadline = now + self.config.half_open_timeout_s

    def _derive_keys(self, gir: bytes) -> None:
        assert self.proposal is not None
        encr, bits, prf, integ = _ike_suite(self.proposal)
        seed = crypto.skeyseed(prf, self.ni, self.nr, gir)
        self._install_keys(crypto.derive_ike_keys(prf, encr, bits, integ, seed, self.ni, self.nr,
                                                  self.spi_i, self.spi_r), prf)

    def _install_keys(self, keys: crypto.IkeKeys, prf_id: int) -> None:
        assert self.proposal is not None
        encr, _bits, _prf, integ = _ike_suite(self.proposal)
        self.keys, self._prf_id = keys, prf_id
        ci = crypto.SkCipher(encr, keys.sk_ei, integ, keys.sk_ai)
        cr = crypto.SkCipher(encr, keys.sk_er, integ, keys.sk_ar)
        self._cout, self._cin = (ci, cr) if self.initiator else (cr, ci)

    # --- IKE_AUTH ---------------------------------------------------------------------------------

    def _psk_auth(self, psk: bytes, signed: bytes, nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
        """RFC 7296 section 2.15: prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>)."""
        p = self._prf_id
        return crypto.prf(p, crypto.prf(p, psk, KEY_PAD), signed + nonce + crypto.prf(p, sk_p, id_body))

    def _send_auth_request(self, now: float) -> None:
        assert self.keys is not None and self._first_child is not None
        cfg = self.config
        idi = m.ID(Payload.IDi, cfg.local_id.id_type, cfg.local_id.data)
        payloads: list = [idi]
        if cfg.remote_id is not None:
            payloads.append(m.ID(Payload.IDr, cfg.remote_id.id_type, cfg.remote_id.data))
        payloads.append(m.Auth(AuthMethod.PSK, self._psk_auth(cfg.psk, self._init_req, self.nr, self.keys.sk_pi,
                                                              idi.body())))
        if cfg.initial_contact:
            payloads.append(m.Notification(Notify.INITIAL_CONTACT))
        neg = self._first_child
        neg.proposals = _strip_ke(cfg.esp_proposals)
        payloads += self._child_request_payloads(neg)
        self._set_state(IkeState.AUTH_SENT)
        self._send_request(now, Exchange.IKE_AUTH, payloads, self._on_auth_response, "auth")

    def _child_request_payloads(self, neg: _ChildNeg) -> list:
        out: list = []
        if self.config.mode == "transport":
            out.append(m.Notification(Notify.USE_TRANSPORT_MODE))
        out.append(m.SA(to_wire(neg.proposals, neg.inbound_spi.to_bytes(4, "big"))))
        if neg.nonce:
            out.append(m.Nonce(neg.nonce))
        if neg.ke is not None:
            out.append(m.KE(neg.ke.group, neg.ke.public))
        out += [m.TS(Payload.TSi, neg.local_ts), m.TS(Payload.TSr, neg.remote_ts)]
        return out

    def _on_auth_response(self, msg: m.Message, now: float) -> None:
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if any(n.type == Notify.AUTHENTICATION_FAILED for n in errors):
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        idr, auth = msg.first(m.ID, Payload.IDr), msg.first(m.Auth)
        if idr is None or auth is None:
            self._close(now, "failed", errors[0].type if errors else Notify.INVALID_SYNTAX)
            return
        peer = Identity(idr.id_type, idr.data)
        assert self.keys is not None
        want = self._psk_auth(self.config.psk, self._init_resp, self.ni, self.keys.sk_pr, idr.body())
        if (self.config.remote_id is not None and peer != self.config.remote_id) or auth.method != AuthMethod.PSK \
                or not _eq(want, auth.data):
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        self.remote_id = peer
        self._establish(now)
        assert self._first_child is not None
        self._finish_child(msg, self._first_child, self.ni, self.nr, b"", now)

    def _recv_auth_request(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        if self.initiator or self.state != IkeState.SA_INIT_DONE:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        self.remote, self.local = addr, local  # the peer may have floated to 4500
        idi, auth = msg.first(m.ID, Payload.IDi), msg.first(m.Auth)
        if idi is None or auth is None:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            self._close(now, "failed", Notify.INVALID_SYNTAX)
            return
        peer = Identity(idi.id_type, idi.data)
        idr_req = msg.first(m.ID, Payload.IDr)
        cfg = self.config
        if self._config_lookup is not None:
            cfg = self._config_lookup(peer, Identity(idr_req.id_type, idr_req.data) if idr_req else None) or cfg
        assert self.keys is not None
        want = self._psk_auth(cfg.psk, self._init_req, self.nr, self.keys.sk_pi, idi.body())
        if (cfg.remote_id is not None and cfg.remote_id != peer) or auth.method != AuthMethod.PSK \
                or not _eq(want, auth.data):
            self._send_response(msg, [m.Notification(Notify.AUTHENTICATION_FAILED)], addr, local)
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        self.config, self.remote_id = cfg, peer
        self.peer_initial_contact = msg.notify(Notify.INITIAL_CONTACT) is not None
        idr = m.ID(Payload.IDr, cfg.local_id.id_type, cfg.local_id.data)
        payloads: list = [idr, m.Auth(AuthMethod.PSK, self._psk_auth(cfg.psk, self._init_resp, self.ni,
                                                                      self.keys.sk_pr, idr.body()))]
        child_payloads, child, fail = self._respond_child(msg, self.ni, self.nr, None, now, ike_auth=True)
        self._send_response(msg, payloads + child_payloads, addr, local)
        self._establish(now)
        if child is not None:
            self.children[child.inbound_spi] = child
            self._event(ChildSaEstablished, keys=child.keys)
        else:
            self._event(ChildSaFailed, notify=fail, reason="first Child SA refused")

    def _establish(self, now: float) -> None:
        self._set_state(IkeState.ESTABLISHED)
        self._half_open_deadline = None
        self._last_recv = now
        assert self.proposal is not None
        self._event(IkeSaEstablished, local_id=str(self.config.local_id), remote_id=str(self.remote_id),
                    proposal=self.proposal.to_strongswan_string(), local=self.local, remote=self.remote,
                    nat_local=self.nat_local, nat_remote=self.nat_remote)
        if self.nat_local or self.nat_remote:
            self._event(NatDetected, local_behind_nat=self.nat_local, remote_behind_nat=self.nat_remote)
        self._schedule_ike_rekey(now)

    def _schedule_ike_rekey(self, now: float) -> None:
        f, life = self.config.rekey_fraction, self.config.ike_lifetime_s
        self._ike_rekey_at = now + life * f - self._jitter(life) if f > 0 and life > 0 else None

    def _retry_delay(self) -> float:
        """2-6 s from the injected rng, so two peers that refused each other do not collide again."""
        return 2.0 + 4.0 * int.from_bytes(self._rng(2), "big") / 65535

    def _jitter(self, span: float) -> float:
        """Up to 10% of ``span`` earlier, from the injected rng, so both peers rarely collide."""
        return span * 0.1 * int.from_bytes(self._rng(2), "big") / 65535

    # --- Child SAs (IKE_AUTH and CREATE_CHILD_SA) -------------------------------------------------

    def _make_child(self, prop: Proposal, in_spi: int, out_spi: int, ni: bytes, nr: bytes, gir: bytes,
                    we_initiated: bool, local_ts: list[TrafficSelector], remote_ts: list[TrafficSelector],
                    mode: str, now: float) -> ChildSa:
        """RFC 7296 section 2.17: KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr); i->r keys first."""
        encr, integ = prop.encr, prop.integ
        if encr is None or encr.esp_name is None:
            raise RemoteProtocolError("ESP proposal without usable encryption", Notify.NO_PROPOSAL_CHOSEN)
        ek = encr.keymat_len
        ak = integ.key_len if integ is not None and not encr.aead else 0
        assert self.keys is not None
        km = crypto.child_keymat(self._prf_id, self.keys.sk_d, ni, nr, 2 * (ek + ak), gir)
        i_enc, i_int, r_enc, r_int = km[:ek], km[ek:ek + ak], km[ek + ak:2 * ek + ak], km[2 * ek + ak:]
        out_keys, in_keys = ((i_enc, i_int), (r_enc, r_int)) if we_initiated else ((r_enc, r_int), (i_enc, i_int))
        encr_name, integ_name, esn = prop.esp_dataplane()
        volume = self._volume_lifetime()
        try:
            inbound = EspSaConfig(spi=in_spi, encr=encr_name, enc_key=in_keys[0], integ=integ_name,
                                  integ_key=in_keys[1], mode=mode, esn=esn, replay_window=self.config.replay_window,
                                  lifetime=volume)
            outbound = EspSaConfig(spi=out_spi, encr=encr_name, enc_key=out_keys[0], integ=integ_name,
                                   integ_key=out_keys[1], mode=mode, esn=esn, replay_window=self.config.replay_window,
                                   lifetime=volume)
        except ConfigError as exc:
            raise RemoteProtocolError(f"unusable Child SA: {exc}", Notify.NO_PROPOSAL_CHOSEN) from None
        life, f = self.config.child_lifetime_s, self.config.rekey_fraction
        keys = ChildSaKeys(inbound, outbound, tuple(local_ts), tuple(remote_ts), mode, self.encap,
                           self.local, self.remote, life, prop.to_strongswan_string())
        rekey_at = now + life * f - self._jitter(life) if f > 0 and life > 0 else None
        return ChildSa(in_spi, out_spi, keys, now, rekey_at, now + life if life > 0 else None)

    def _volume_lifetime(self) -> Lifetime:
        """Byte/packet limits for the data plane (its soft expire event should trigger rekey_child)."""
        life = self.config.extra.get("child_lifetime")
        hard_b = int(getattr(life, "kilobytes", 0) or 0) * 1024
        hard_p = int(getattr(life, "packets", 0) or 0)
        f = self.config.rekey_fraction if 0 < self.config.rekey_fraction < 1 else 0.9
        return Lifetime(soft_bytes=int(hard_b * f), hard_bytes=hard_b, soft_packets=int(hard_p * f),
                        hard_packets=hard_p)

    def _respond_child(self, msg: m.Message, ni: bytes, nr: bytes, rekey_of: ChildSa | None, now: float,
                       ike_auth: bool = False) -> tuple[list, ChildSa | None, int]:
        """Responder side of a Child SA negotiation: (response payloads, new child or None, notify)."""
        sa, tsi, tsr = msg.first(m.SA), msg.first(m.TS, Payload.TSi), msg.first(m.TS, Payload.TSr)
        if sa is None or tsi is None or tsr is None:
            return [m.Notification(Notify.INVALID_SYNTAX)], None, Notify.INVALID_SYNTAX
        offered = [p for p in from_wire(sa.proposals) if p.protocol == "esp"]
        mine = self.config.esp_proposals
        if ike_auth:  # no PFS for the first Child SA: KE transforms there are ignored
            offered, mine = _strip_ke(offered), _strip_ke(mine)
        chosen = select(mine, offered)
        if chosen is None or len(chosen.spi) != 4:
            return [m.Notification(Notify.NO_PROPOSAL_CHOSEN)], None, Notify.NO_PROPOSAL_CHOSEN
        ts_i = narrow(tsi.selectors, self.config.remote_ts)
        ts_r = narrow(tsr.selectors, self.config.local_ts)
        if not ts_i or not ts_r:
            return [m.Notification(Notify.TS_UNACCEPTABLE)], None, Notify.TS_UNACCEPTABLE
        gir = b""
        extra: list = []
        if not ike_auth:
            extra.append(m.Nonce(nr))
            if chosen.ke is not None:
                kep = msg.first(m.KE)
                if kep is None or kep.group != chosen.ke.id:
                    data = chosen.ke.id.to_bytes(2, "big")
                    return [m.Notification(Notify.INVALID_KE_PAYLOAD, data)], None, Notify.INVALID_KE_PAYLOAD
                ke = crypto.KeyExchange(chosen.ke.id, self._rng)
                gir = ke.shared_secret(kep.data)
                extra.append(m.KE(ke.group, ke.public))
        transport = msg.notify(Notify.USE_TRANSPORT_MODE) is not None and self.config.mode == "transport"
        mode = "transport" if transport else "tunnel"
        in_spi = self._alloc_child_spi()
        try:
            child = self._make_child(chosen, in_spi, int.from_bytes(chosen.spi, "big"), ni, nr, gir, False,
                                     ts_r, ts_i, mode, now)
        except RemoteProtocolError as exc:
            return [m.Notification(exc.notify)], None, exc.notify
        payloads: list = [m.Notification(Notify.USE_TRANSPORT_MODE)] if transport else []
        payloads += [m.SA(to_wire([chosen], in_spi.to_bytes(4, "big"))), *extra,
                     m.TS(Payload.TSi, ts_i), m.TS(Payload.TSr, ts_r)]
        return payloads, child, 0

    def _finish_child(self, msg: m.Message, neg: _ChildNeg, ni: bytes, nr: bytes, gir: bytes,
                      now: float) -> ChildSa | None:
        """Initiator side: check the responder's choice, derive keys, emit events."""
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if errors:
            if errors[0].type == Notify.TEMPORARY_FAILURE and neg.rekey_of is not None \
                    and neg.rekey_of.inbound_spi in self.children and not neg.rekey_of.rekeyed:
                neg.rekey_of.rekey_at = now + self._retry_delay()  # RFC 7296 2.25: retry a bit later
                self._count("rekey_retry")
                return None
            self._event(ChildSaFailed, notify=errors[0].type, reason="refused by peer")
            return None
        sa, tsi, tsr = msg.first(m.SA), msg.first(m.TS, Payload.TSi), msg.first(m.TS, Payload.TSr)
        props = from_wire(sa.proposals) if sa else []
        ok = bool(tsi and tsr) and len(props) == 1 and len(props[0].spi) == 4 \
            and check_selected(neg.proposals, props[0])
        if ok and tsi and tsr:
            # the responder may only narrow what we proposed
            ok = narrow(tsi.selectors, neg.local_ts) == tsi.selectors and \
                narrow(tsr.selectors, neg.remote_ts) == tsr.selectors and bool(tsi.selectors and tsr.selectors)
        if not ok or not (tsi and tsr):
            self._event(ChildSaFailed, notify=Notify.INVALID_SYNTAX, reason="bad Child SA answer")
            return None
        mode = "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and self.config.mode == "transport" else "tunnel"
        try:
            child = self._make_child(props[0], neg.inbound_spi, int.from_bytes(props[0].spi, "big"), ni, nr, gir,
                                     True, tsi.selectors, tsr.selectors, mode, now)
        except RemoteProtocolError as exc:
            self._event(ChildSaFailed, notify=exc.notify, reason=str(exc))
            return None
        self.children[child.inbound_spi] = child
        old = neg.rekey_of
        if old is not None and neg.collision is not None:
            _peer_child, peer_low = neg.collision
            self._event(ChildSaRekeyed, old_inbound_spi=old.inbound_spi, old_outbound_spi=old.outbound_spi,
                        keys=child.keys)
            if min(ni, nr) < peer_low:
                # our exchange has the lowest nonce: our new SA is the redundant one, we close it;
                # the peer (initiator of the surviving exchange) deletes the old SA
                self._queue.appendleft(("delete_child", lambda t: self._start_delete_child(
                    t, child.inbound_spi, "redundant")))
            else:
                self._queue.appendleft(("delete_child", lambda t: self._start_delete_child(
                    t, old.inbound_spi, "rekeyed")))
        elif old is not None and old.inbound_spi in self.children:
            old.rekeyed = True
            self._event(ChildSaRekeyed, old_inbound_spi=old.inbound_spi, old_outbound_spi=old.outbound_spi,
                        keys=child.keys)
            # make-before-break: the new SA is in, now retire the old one
            self._queue.appendleft(("delete_child", lambda t: self._start_delete_child(t, old.inbound_spi,
                                                                                        "rekeyed")))
        else:
            self._event(ChildSaEstablished, keys=child.keys)
        if child.outbound_spi in self._early_deletes:
            self.children.pop(child.inbound_spi, None)
            self._event(ChildSaDeleted, inbound_spi=child.inbound_spi, outbound_spi=child.outbound_spi,
                        reason="remote")
        return child

    def _start_create_child(self, now: float, rekey_of: ChildSa | None, local_ts: list | None = None,
                            remote_ts: list | None = None, group: int | None = None) -> None:
        if rekey_of is not None and (rekey_of.inbound_spi not in self.children or rekey_of.rekeyed):
            return  # deleted or rekeyed by the peer meanwhile
        props = self.config.esp_proposals
        group = group if group is not None else _first_group(props)
        neg = _ChildNeg(
            self._alloc_child_spi(), self._nonce(),
            crypto.KeyExchange(group, self._rng) if group else None, props,
            list(local_ts or (rekey_of.keys.local_ts if rekey_of else self.config.local_ts)),
            list(remote_ts or (rekey_of.keys.remote_ts if rekey_of else self.config.remote_ts)),
            rekey_of,
        )
        payloads: list = []
        if rekey_of is not None:
            payloads.append(m.Notification(Notify.REKEY_SA, b"", Protocol.ESP, rekey_of.inbound_spi.to_bytes(4, "big")))
        payloads += self._child_request_payloads(neg)
        self._child_neg = neg
        self._send_request(now, Exchange.CREATE_CHILD_SA, payloads,
                           lambda r, t: self._on_create_child_response(r, t, neg),
                           "rekey_child" if rekey_of else "create_child")

    def _on_create_child_response(self, msg: m.Message, now: float, neg: _ChildNeg) -> None:
        self._child_neg = None
        bad_ke = msg.notify(Notify.INVALID_KE_PAYLOAD)
        if bad_ke is not None and neg.ke is not None:
            want = int.from_bytes(bad_ke.data[:2], "big") if len(bad_ke.data) >= 2 else 0
            if want in _groups(neg.proposals) and want != neg.ke.group:
                self._queue.appendleft(("retry", lambda t: self._start_create_child(
                    t, neg.rekey_of, neg.local_ts, neg.remote_ts, want)))
                return
        nonce = msg.first(m.Nonce)
        gir = b""
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if not errors:
            kep = msg.first(m.KE)
            if nonce is None or (neg.ke is not None and (kep is None or kep.group != neg.ke.group)):
                self._event(ChildSaFailed, notify=Notify.INVALID_SYNTAX, reason="bad CREATE_CHILD_SA answer")
                return
            if neg.ke is not None and kep is not None:
                try:
                    gir = neg.ke.shared_secret(kep.data)
                except RemoteProtocolError as exc:
                    self._event(ChildSaFailed, notify=exc.notify, reason=str(exc))
                    return
        self._finish_child(msg, neg, neg.nonce, nonce.data if nonce else b"", gir, now)
        self._early_deletes.clear()

    def _recv_create_child(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        sa = msg.first(m.SA)
        if sa is None:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        if any(p.protocol == Protocol.IKE for p in sa.proposals):
            self._recv_rekey_ike(msg, addr, local, now)
            return
        old = None
        rekey = msg.notify(Notify.REKEY_SA)
        if rekey is not None:
            spi = int.from_bytes(rekey.spi, "big")
            old = next((c for c in self.children.values() if c.outbound_spi == spi), None)
            if old is not None and old.rekeyed:
                neg = self._child_neg
                if neg is None or neg.rekey_of is not old or neg.collision is not None:
                    # already replaced and being deleted (RFC 7296 section 2.25)
                    self._send_response(msg, [m.Notification(Notify.TEMPORARY_FAILURE)], addr, local)
                    return
            if old is None:
                self._send_response(msg, [m.Notification(Notify.CHILD_SA_NOT_FOUND, b"", Protocol.ESP, rekey.spi)],
                                    addr, local)
                return
        nonce = msg.first(m.Nonce)
        if nonce is None:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        nr = self._nonce()
        payloads, child, _fail = self._respond_child(msg, nonce.data, nr, old, now)
        self._send_response(msg, payloads, addr, local)
        if child is None:
            return
        self.children[child.inbound_spi] = child
        neg = self._child_neg
        if old is not None and neg is not None and neg.rekey_of is old:
            neg.collision = (child, min(nonce.data, nr))
        if old is not None:
            old.rekeyed = True
            self._event(ChildSaRekeyed, old_inbound_spi=old.inbound_spi, old_outbound_spi=old.outbound_spi,
                        keys=child.keys)
        else:
            self._event(ChildSaEstablished, keys=child.keys)

    # --- INFORMATIONAL ----------------------------------------------------------------------------

    def _recv_informational(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        out: list = []
        for d in msg.get(m.Delete):
            if d.protocol == Protocol.IKE:
                self._send_response(msg, [], addr, local)
                moved = self.successor is not None
                self._close(now, "rekeyed" if moved else "remote", quiet_children=moved)
                return
            if d.protocol != Protocol.ESP:
                continue
            ours = []
            for spi_b in d.spis:
                spi = int.from_bytes(spi_b, "big")
                child = next((c for c in self.children.values() if c.outbound_spi == spi), None)
                if child is None:
                    if self._child_neg is not None and len(self._early_deletes) < 64:
                        self._early_deletes.add(spi)
                    continue
                del self.children[child.inbound_spi]
                ours.append(child.inbound_spi.to_bytes(4, "big"))
                self._event(ChildSaDeleted, inbound_spi=child.inbound_spi, outbound_spi=child.outbound_spi,
                            reason="rekeyed" if child.rekeyed else "remote")
            if ours:
                out.append(m.Delete(Protocol.ESP, ours))
        # anything else (DPD, status notifies) gets an empty answer
        self._send_response(msg, out, addr, local)

    def _start_delete_child(self, now: float, inbound_spi: int, reason: str = "local") -> None:
        if inbound_spi not in self.children:
            return

        def done(resp: m.Message, t: float) -> None:
            c = self.children.pop(inbound_spi, None)
            if c is not None:
                self._event(ChildSaDeleted, inbound_spi=c.inbound_spi, outbound_spi=c.outbound_spi, reason=reason)

        self._send_request(now, Exchange.INFORMATIONAL, [m.Delete(Protocol.ESP, [inbound_spi.to_bytes(4, "big")])],
                           done, "delete_child")

    def _start_delete_ike(self, now: float) -> None:
        moved = self.successor is not None
        self._set_state(IkeState.DELETING)
        self._send_request(now, Exchange.INFORMATIONAL, [m.Delete(Protocol.IKE)],
                           lambda r, t: self._close(t, "rekeyed" if moved else "local", quiet_children=moved),
                           "delete")

    # --- IKE SA rekey (RFC 7296 section 2.18) -------------------------------------------------------

    def _start_rekey_ike(self, now: float, group: int | None = None) -> None:
        self._rekeying_ike = True
        group = group or self._group
        ke = crypto.KeyExchange(group, self._rng)
        new_spi, ni = self._rng(8), self._nonce()
        payloads = [m.SA(to_wire(self.config.ike_proposals, new_spi)), m.Nonce(ni), m.KE(group, ke.public)]
        self._send_request(now, Exchange.CREATE_CHILD_SA, payloads,
                           lambda r, t: self._on_rekey_ike_response(r, t, new_spi, ni, ke), "rekey_ike")

    def _on_rekey_ike_response(self, msg: m.Message, now: float, new_spi: bytes, ni: bytes,
                               ke: crypto.KeyExchange) -> None:
        self._rekeying_ike = False
        bad_ke = msg.notify(Notify.INVALID_KE_PAYLOAD)
        if bad_ke is not None:
            want = int.from_bytes(bad_ke.data[:2], "big") if len(bad_ke.data) >= 2 else 0
            if want in _groups(self.config.ike_proposals) and want != ke.group:
                self._queue.appendleft(("retry", lambda t: self._start_rekey_ike(t, want)))
            return
        sa, nonce, kep = msg.first(m.SA), msg.first(m.Nonce), msg.first(m.KE)
        props = from_wire(sa.proposals) if sa else []
        if not (sa and nonce and kep) or len(props) != 1 or len(props[0].spi) != 8 \
                or not check_selected(self.config.ike_proposals, props[0]) or props[0].ke is None \
                or props[0].ke.id != ke.group or kep.group != ke.group:
            if msg.notify(Notify.TEMPORARY_FAILURE) is not None:
                self._ike_rekey_at = now + self._retry_delay()  # RFC 7296 2.25: retry a bit later
                self._count("rekey_retry")
            else:
                self._count("rekey_failed")
                self._schedule_ike_rekey(now)
            return
        try:
            gir = ke.shared_secret(kep.data)
        except RemoteProtocolError:
            self._count("rekey_failed")
            return
        self._spawn(now, True, new_spi, props[0].spi, ni, nonce.data, gir, props[0])
        self._queue.clear()
        self._enqueue("delete", self._start_delete_ike)

    def _recv_rekey_ike(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        sa, nonce, kep = msg.first(m.SA), msg.first(m.Nonce), msg.first(m.KE)
        if not (sa and nonce and kep):
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        if self._pending is not None or self._queue or self.state != IkeState.ESTABLISHED:
            # an exchange of ours is in flight on this SA (a Child SA being created or rekeyed, our
            # own IKE rekey, a delete): moving the Child SAs now could strand it, so the peer has
            # to retry later (RFC 7296 2.25; strongSwan refuses the same way)
            self._send_response(msg, [m.Notification(Notify.TEMPORARY_FAILURE)], addr, local)
            return
        chosen = select(self.config.ike_proposals, [p for p in from_wire(sa.proposals) if p.protocol == "ike"])
        if chosen is None or chosen.ke is None or len(chosen.spi) != 8:
            self._send_response(msg, [m.Notification(Notify.NO_PROPOSAL_CHOSEN)], addr, local)
            return
        if kep.group != chosen.ke.id:
            self._send_response(msg, [m.Notification(Notify.INVALID_KE_PAYLOAD, chosen.ke.id.to_bytes(2, "big"))],
                                addr, local)
            return
        ke = crypto.KeyExchange(chosen.ke.id, self._rng)
        gir = ke.shared_secret(kep.data)
        my_spi, nr = self._rng(8), self._nonce()
        self._send_response(msg, [m.SA(to_wire([chosen], my_spi)), m.Nonce(nr), m.KE(ke.group, ke.public)],
                            addr, local)
        self._spawn(now, False, chosen.spi, my_spi, nonce.data, nr, gir, chosen)

    def _spawn(self, now: float, we_initiated: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes, gir: bytes,
               proposal: Proposal) -> IkeSa:
        """Build the IKE SA that replaces this one; Child SAs move over (no Child events)."""
        new = IkeSa(self.config, initiator=we_initiated, local=self.local, remote=self.remote, rng=self._rng,
                    sink=self._sink, config_lookup=self._config_lookup)
        new.spi_i, new.spi_r, new.ni, new.nr, new.proposal = spi_i, spi_r, ni, nr, proposal
        new._group = proposal.ke.id if proposal.ke else self._group
        encr, bits, prf, integ = _ike_suite(proposal)
        assert self.keys is not None
        # SKEYSEED with the old SA's PRF and SK_d, then prf+ of the new PRF (as strongSwan does)
        seed = crypto.rekey_skeyseed(self._prf_id, self.keys.sk_d, gir, ni, nr)
        new._install_keys(crypto.derive_ike_keys(prf, encr, bits, integ, seed, ni, nr, spi_i, spi_r), prf)
        new.nat_local, new.nat_remote, new.remote_id = self.nat_local, self.nat_remote, self.remote_id
        new.children, self.children = self.children, {}
        new._set_state(IkeState.ESTABLISHED)
        new._created = new._last_recv = now
        new._schedule_ike_rekey(now)
        self.successor = new
        self._sink.new_sas.append(new)
        self._event(IkeSaRekeyed, new_spi_i=spi_i, new_spi_r=spi_r)
        return new


def _strip_ke(props: list[Proposal]) -> list[Proposal]:
    """Proposals without KE transforms (for the Child SA inside IKE_AUTH)."""
    return [Proposal(p.protocol, tuple(t for t in p.transforms if t.type != TransformType.KE), p.number, p.spi)
            for p in props]


def _eq(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def __getattr__(name: str) -> object:
    # ``from ipsecemu.ike.sa import IkeEndpoint`` as documented above (endpoint.py imports this module)
    if name == "IkeEndpoint":
        from .endpoint import IkeEndpoint

        return IkeEndpoint
    raise AttributeError(name)
