"""The state every IKE SA task works on, and the plumbing they share (message IDs, sending,
events, counters, closing).

``SaCore`` is the base of every task mixin in this package and of ``ipsecemu.ike.sa.IkeSa``: its
attributes are declared (and set) here once, so each mixin is type-checked against the whole SA
instead of against an unknown ``self``.  The methods one mixin calls on another are declared at the
end of the class for the type checker only; their code lives in the mixin named beside them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import crypto
from .. import fragments as frag
from .. import message as m
from ..errors import LocalProtocolError
from ..events import ChildSaDeleted, IkeSaDeleted
from ..proposals import Proposal
from ..settings import Identity, IkeSaConfig
from ..states import IkeState, check
from ..ts import TrafficSelector
from .base import Addr, ChildSa, Rng, Sink, _ChildNeg, _first_group, _Request

# close reasons for which ``last_error`` (set where the problem was found) explains the close
_FAILURES = frozenset({"auth_failed", "no_proposal", "failed"})

ConfigLookup = Callable[[Identity, Identity | None], IkeSaConfig | None]


class SaCore:
    """One IKE SA's state and plumbing; the protocol logic is in the task mixins."""

    def __init__(
        self,
        config: IkeSaConfig,
        *,
        initiator: bool,
        local: Addr,
        remote: Addr | None = None,
        rng: Rng | None = None,
        sink: Sink | None = None,
        config_lookup: ConfigLookup | None = None,
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
        self.peer_sig_hashes: frozenset[int] = frozenset()  # RFC 7427 hashes the peer announced
        self.frag_ok = False  # both sides said IKEV2_FRAGMENTATION_SUPPORTED
        self.childless_ok = False  # both sides said CHILDLESS_IKEV2_SUPPORTED (RFC 6023)
        self._want_child = True  # initiate(child=False): no first Child SA at all
        self._reasm = frag.Reassembler()
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
        self._ike_expire_at: float | None = None  # hard limit if rekeying keeps failing
        self._half_open_deadline: float | None = None
        self.counters: dict[str, int] = {}
        self.successor: SaCore | None = None
        self._rekeying_ike = False
        # simultaneous IKE rekey: (the peer's new SA, the lowest nonce of its exchange)
        self._ike_collision: tuple[SaCore, bytes] | None = None
        self._collision_of: SaCore | None = None  # the peer's new SA of a collision: the old SA
        self._redundant = False  # the losing new SA of a simultaneous IKE rekey
        self._redundant_deadline: float | None = None  # we delete it then if the peer has not
        # the IKE SA we made by answering the peer's rekey request, and that request's message ID:
        # a retransmission of it means our answer is not in yet (see _peer_resent)
        self._answered_rekey: tuple[int, SaCore] | None = None
        self._expire_cap: float | None = None  # how far an owed rekey may push the hard lifetime back
        self._answered_child: tuple[int, ChildSa] | None = None  # the same for a Child SA we answered
        self._child_neg: _ChildNeg | None = None  # our CREATE_CHILD_SA in flight
        # Deletes for outbound SPIs we do not know yet, received while our CREATE_CHILD_SA was in
        # flight: the peer answered it (response lost or late) and already deleted the result
        self._early_deletes: set[int] = set()
        self.peer_initial_contact = False  # the peer said INITIAL_CONTACT: its older SAs are stale
        self.last_error = ""  # the last peer protocol error (for logs; never contains key material)
        self._refusal = ""  # why we refused the peer's last Child SA (set by _respond_child)

    # --- properties -----------------------------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def encap(self) -> bool:
        return self.nat_local or self.nat_remote or self.config.force_encap

    # --- internals: plumbing --------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1
        key = "sa_" + what
        self._sink.totals[key] = self._sink.totals.get(key, 0) + 1

    def _set_state(self, new: IkeState) -> None:
        if new != self.state:
            check(self.state, new)
            self.state = new

    def _event(self, ev_cls: type, **kw: object) -> None:
        self._sink.events.append(ev_cls(ike_spi_i=self.spi_i, ike_spi_r=self.spi_r, conn=self.config.name,
                                        peer=self.remote, initiator=self.initiator, **kw))

    def _emit(self, wire: bytes) -> None:
        self._sink.out.append((wire, self.remote, self.local))

    def _require_established(self) -> None:
        if self.state != IkeState.ESTABLISHED:
            raise LocalProtocolError(f"IKE SA {self.config.name} is {self.state.value}, not established")
        if self._redundant:
            raise LocalProtocolError(f"IKE SA {self.config.name} lost (or is resolving) a simultaneous rekey")

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
        assert self._cout is not None  # only messages after IKE_SA_INIT are encrypted: keys installed
        return msg.encode_encrypted(self._cout, self._rng(self._cout.encr.iv_len))

    def _encrypt_frags(self, msg: m.Message) -> list[bytes]:
        """``msg`` encrypted; as RFC 7383 fragments if negotiated and it would not fit."""
        wire = self._encrypt(msg)
        if not self.frag_ok:
            return [wire]
        budget = frag.ike_budget(self.config.fragment_size, self.local, ":" in self.local[0])
        if len(wire) <= budget:
            return [wire]
        assert self._cout is not None  # _encrypt above needed it too
        self._count("fragmented")
        return frag.fragment(msg, self._cout, self._rng, budget)

    def _retransmit_span(self) -> float:
        """How long one request is retransmitted before it is given up (4 s x 1.8, 5 tries: 165.5 s)."""
        c = self.config
        return c.retransmit_timeout_s * sum(c.retransmit_base ** k for k in range(c.retransmit_tries + 1))

    def _adopt_children(self, children: dict[int, ChildSa], now: float) -> None:
        """Child SAs moving here from the IKE SA this one replaced.  A timed rekey of one that was
        due and queued there dies with that SA's queue (cleared when it was rekeyed, or started
        there, where the Child SA no longer is): without a new rekey time it would never be
        rekeyed again and run into its hard lifetime.  Rekey those here at once."""
        for c in children.values():
            if c.rekey_at is None and not c.rekeyed and c.expire_at is not None and self.config.rekey_fraction > 0:
                c.rekey_at = now
                self._count("child_rekey_rearmed")
        self.children.update(children)

    def _send_request(self, now: float, exchange: int, payloads: list[m.AnyPayload], on_response: Callable[[m.Message, float], None],
                      kind: str) -> None:
        msg = m.Message(self.spi_i, self.spi_r, exchange, self._next_id, self.initiator, False, payloads)
        wires = self._encrypt_frags(msg)
        self._pending = _Request(self._next_id, wires[0], exchange, on_response, kind, 0,
                                 now + self.config.retransmit_timeout_s, now, wires if len(wires) > 1 else [])
        for w in wires:
            self._emit(w)

    def _send_response(self, req: m.Message, payloads: list[m.AnyPayload], addr: Addr, local: Addr) -> None:
        msg = m.Message(self.spi_i, self.spi_r, req.exchange, req.msg_id, self.initiator, True, payloads)
        out = [(w, addr, local) for w in self._encrypt_frags(msg)]
        self._sink.out.extend(out)
        self._last_response = (req.msg_id, out)

    def _close(self, now: float, reason: str, notify: int = 0, quiet_children: bool = False,
               detail: str = "") -> None:
        """``detail``: why, in words, for the IkeSaDeleted event (defaults to ``last_error``)."""
        if self.state == IkeState.CLOSED:
            return
        if not quiet_children:
            for c in self.children.values():
                self._event(ChildSaDeleted, inbound_spi=c.inbound_spi, outbound_spi=c.outbound_spi, reason=reason)
        self.children.clear()
        self._pending = None
        self._queue.clear()
        self._half_open_deadline = None
        self._reasm.clear()
        self.state = IkeState.CLOSED
        self._event(IkeSaDeleted, reason=reason, notify=notify, detail=detail or (self.last_error if reason in _FAILURES else ""))

    if TYPE_CHECKING:
        # Methods one task mixin calls on another (or on the SA a rekey creates): declared for the
        # type checker only, so nothing here shadows the mixins' code at run time.
        # tasks/ike_init.py
        def _install_keys(self, keys: crypto.IkeKeys, prf_id: int) -> None: ...
        # tasks/ike_auth.py
        def _send_auth_request(self, now: float) -> None: ...
        def _child_request_payloads(self, neg: _ChildNeg) -> list[m.AnyPayload]: ...
        def _schedule_ike_rekey(self, now: float) -> None: ...
        def _retry_delay(self) -> float: ...
        def _jitter(self, span: float, most: float | None = None) -> float: ...
        # tasks/child.py
        def _respond_child(self, msg: m.Message, ni: bytes, nr: bytes, rekey_of: ChildSa | None, now: float,
                           ike_auth: bool = False) -> tuple[list[m.AnyPayload], ChildSa | None, int]: ...
        def _child_refused(self, notify: int, msg: m.Message, ike_auth: bool = False) -> None: ...
        def _finish_child(self, msg: m.Message, neg: _ChildNeg, ni: bytes, nr: bytes, gir: bytes,
                          now: float) -> ChildSa | None: ...
        def _start_create_child(self, now: float, rekey_of: ChildSa | None,
                                local_ts: list[TrafficSelector] | None = None,
                                remote_ts: list[TrafficSelector] | None = None, group: int | None = None) -> None: ...
        # tasks/info.py
        def _start_delete_child(self, now: float, inbound_spi: int, reason: str = "local") -> None: ...
        def _start_delete_ike(self, now: float) -> None: ...
        # tasks/ike_rekey.py
        def _recv_rekey_ike(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None: ...
        def _peer_resent(self, msg: m.Message, now: float) -> None: ...
        def _redate(self, now: float) -> bool: ...
        def _collision_survivor(self, new: SaCore, now: float) -> None: ...
        # sa.py (the public API)
        def delete(self, now: float) -> None: ...
