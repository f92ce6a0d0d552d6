"""The IKEv2 SA object: a sans-I/O state machine (RFC 7296).  No sockets, no clock, no randomness.

API (stable; the asyncio transport in ``ipsecemu.io`` codes against this)
--------------------------------------------------------------------------

Addresses are ``(host: str, port: int)`` tuples.  ``now`` is a float in seconds (any monotonic
clock the caller likes).  Randomness (SPIs, nonces, DH private keys, IVs, rekey jitter) comes from
``rng: Callable[[int], bytes]`` (default ``os.urandom``) so runs and published vectors reproduce.

``IkeEndpoint(configs, local, *, rng=os.urandom, cookie_threshold=10, max_half_open=1000)``
(``ipsecemu.ike.endpoint``; not re-exported here, endpoint.py imports this module) -- what a transport drives.  ``configs`` are ``settings.IkeSaConfig``
(``config.connection_ike.to_ike_sa_config`` builds them from YAML).  It owns every IKE SA of one local
address; routes datagrams by SPI; answers IKE_SA_INIT requests (responder role: the config
naming the peer address / matching the offered IKE proposal, switched in IKE_AUTH by the peer's
identity); sends stateless COOKIEs once ``cookie_threshold`` SAs are half-open and answers
nothing (counter ``half_open_cap``) once ``max_half_open`` are.
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
    * ``initiate(name, now, remote: Addr | None = None, child: bool = True) -> IkeSa``: start an
      IKE SA for config ``name`` (IKE_SA_INIT + IKE_AUTH carrying the first Child SA; see
      "Childless IKE SAs" below for ``child=False`` and ``IkeSaConfig.childless``).
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
    ``inbound`` / ``outbound`` ``ipsecemu.base.satypes.EspSaConfig`` (``encr`` like "aes-gcm-16",
    ``enc_key`` including the 4-byte salt, ``integ`` like "hmac-sha256-128" or None, byte/packet
    ``lifetime``), ``local_ts``/``remote_ts``, ``mode``, ``encap``, outer ``local``/``remote``,
    ``lifetime_s``, ``proposal``; ``ChildSaDeleted`` (SPIs, ``reason``: "local", "remote",
    "rekeyed", "redundant" for the loser of a simultaneous rekey); ``ChildSaFailed`` (a Child SA
    was refused -- the IKE SA stays up); ``PeerAddressChanged`` (a NATed peer moved: send IKE and
    ESP to the new ``remote``).

Authentication: PSK (``IkeSaConfig.psk``) or X.509 certificates (``IkeSaConfig.certs``, a
``certs.CertAuth``: RFC 7427 / RSA / ECDSA signatures, CERT + CERTREQ, the peer's chain checked
against our CAs, its ID checked against its certificate); see ``tasks/ike_auth.py``.

IKE fragmentation (RFC 7383, ``fragments.py``): offered and accepted when
``IkeSaConfig.fragmentation``; encrypted messages bigger than ``fragment_size`` (IP datagram
bytes) go out as SKF fragments; incoming fragments are authenticated one by one and reassembled
within fixed limits.  ``frag_ok`` says whether both sides agreed.

Childless IKE SAs (RFC 6023): both roles send CHILDLESS_IKEV2_SUPPORTED in IKE_SA_INIT unless
``IkeSaConfig.childless == "never"``; ``childless_ok`` says the responder announced it (and we
allow it; strongSwan's initiator sends no notify, so a responder does not wait for one).  With ``"force"`` the
initiator's IKE_AUTH carries no SA/TSi/TSr (the IKE SA fails if the peer lacks support) and the
configured Child SA follows at once by CREATE_CHILD_SA; with ``"allow"`` (default) that happens
only for ``initiate(child=False)`` (then no Child SA is created; ``create_child`` adds one later).
A responder accepts a childless IKE_AUTH when it announced support (counter ``childless``) and
otherwise (``"never"``) answers INVALID_SYNTAX and closes the SA.

Collisions: simultaneous Child SA rekeys (RFC 7296 2.8.1) and IKE SA rekeys (2.8.2) both
complete; the exchange with the lowest nonce loses and its initiator deletes the redundant SA
(Child: ``ChildSaDeleted(reason="redundant")``; IKE: ``IkeSaDeleted(reason="rekeyed")``, and the
loser's new IKE SA is never announced by ``IkeSaRekeyed``).  A rekey that meets a delete loses to
the delete; a request on an IKE SA that was already rekeyed gets TEMPORARY_FAILURE.

Lifetimes under loss (issue #13): a rekey still owed when an SA's hard lifetime comes (held up by
an exchange of ours stuck in retransmissions, or refused by a busy peer) runs first; the expiry
waits for it by at most one retransmission schedule (``ike_expiry_deferred`` /
``child_expiry_deferred``).  A retransmitted request re-dates what our lost answer to it created
(the peer dates it from when an answer gets through).  A DPD in flight does not make us refuse
the peer's IKE rekey; a due IKE rekey goes before due Child rekeys.

Errors (``ipsecemu.ike.errors``): ``LocalProtocolError`` for caller misuse (raised from API calls),
``RemoteProtocolError`` for a misbehaving peer (never escapes the driving calls; carries the
notify to answer with).
"""

from __future__ import annotations

from . import fragments as frag
from . import message as m
from .consts import Exchange, Notify, Payload
from .errors import IntegrityError, LocalProtocolError, ParseError, RemoteProtocolError
from .events import (
    Event,
    PeerAddressChanged,
)
from .states import IkeState
from .tasks.base import (
    Addr,
    ChildSa,
    Sink,
    _ChildNeg,
    from_wire,
    natd_hash,
    to_wire,
)
from .tasks.child import ChildTask
from .tasks.ike_auth import IkeAuthTask
from .tasks.ike_init import IkeInitTask
from .tasks.ike_rekey import IkeRekeyTask
from .tasks.info import InformationalTask
from .ts import TrafficSelector

__all__ = ["IkeSa", "ChildSa", "Sink", "IkeState", "natd_hash", "to_wire", "from_wire", "Addr"]


class IkeSa(IkeInitTask, IkeAuthTask, ChildTask, InformationalTask, IkeRekeyTask):
    """One IKE SA; see the module docstring for the driving API (state and plumbing: ``tasks.core``)."""

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
            dpd_timeout = self.config.dpd_timeout_s
            if self._pending.kind == "dpd" and dpd_timeout:
                times.append(self._pending.started + dpd_timeout)
        if self._half_open_deadline is not None:
            times.append(self._half_open_deadline)
        if self.state == IkeState.ESTABLISHED and self._pending is None:
            if self._redundant:  # a rekey collision's loser (or undecided): only its own deletion
                return self._redundant_deadline
            if self.config.dpd_delay_s > 0:
                times.append(self._last_recv + self.config.dpd_delay_s)
            if self._ike_rekey_at is not None and not self._rekeying_ike:
                times.append(self._ike_rekey_at)
            if self._ike_expire_at is not None:
                times.append(self._ike_expire_at)
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
        dpd_timeout = self.config.dpd_timeout_s
        # an SA already replaced by a rekey (or a collision's loser) that gives up loses nothing:
        # its Child SAs live on the successor (e.g. a DPD still in flight when the peer rekeyed it)
        replaced = self.successor is not None or self._redundant
        if p is not None and p.kind == "dpd" and dpd_timeout and now >= p.started + dpd_timeout:
            # e.g. Azure: peer declared dead after 45 s without an answer
            self._close(now, "rekeyed" if replaced else "dpd", quiet_children=replaced)
            return
        if p is not None and now >= p.next_at:
            if p.tries >= self.config.retransmit_tries:
                if self._ike_collision is not None and self._ike_collision[0].state != IkeState.CLOSED:
                    # our half of a simultaneous rekey never got an answer: the peer's new SA stays
                    # (unless the peer already retired it as the loser: then nothing survives here)
                    survivor = self._ike_collision[0]
                    self._collision_survivor(survivor, now)
                    self._ike_collision = None
                    self._close(now, "rekeyed", quiet_children=True)
                    # but the peer has that SA only if our answer to its rekey reached it, and we
                    # cannot tell (it may have timed out the same way and adopted ours, which we
                    # never completed): a liveness check on it either confirms it or, unanswered,
                    # closes it, so both sides never keep two different lone SAs
                    while survivor.successor is not None:
                        survivor = survivor.successor
                    if isinstance(survivor, IkeSa) and survivor.state == IkeState.ESTABLISHED \
                            and not survivor._redundant:
                        survivor.dpd(now)
                    return
                if replaced:
                    # the Delete (or DPD) of a replaced (or redundant) SA went unanswered: nothing
                    # is lost, its Child SAs live on the successor; the peer may have dropped it
                    self._close(now, "rekeyed", quiet_children=True)
                    return
                self._close(now, "dpd" if p.kind == "dpd" else "timeout")
                return
            p.tries += 1
            p.next_at = now + self.config.retransmit_timeout_s * self.config.retransmit_base**p.tries
            for w in p.frags or [p.wire]:
                self._emit(w)
            self._count("retransmit")
            return
        if self.state != IkeState.ESTABLISHED or self._pending is not None:
            return
        if self._redundant and self._redundant_deadline is not None and now >= self._redundant_deadline:
            self._redundant_deadline = None
            self.delete(now)
            return
        if self._redundant:
            return
        cap = self._expire_cap
        if self._ike_expire_at is not None and now >= self._ike_expire_at and self.successor is None \
                and self._ike_rekey_at is not None and cap is not None and now < cap:
            # the hard lifetime came while a rekey is still owed: it was held up by an exchange of
            # ours stuck in retransmissions (window size 1), or the peer refused it as busy
            # (TEMPORARY_FAILURE, RFC 7296 2.25.2).  Deleting now would throw away an SA that only
            # waited its turn (issue #13: the IKE SA expired and the tunnel went down); try the
            # rekey first, for at most one more retransmission schedule.  A dead peer still ends it
            # (the rekey times out), and so does a peer that refuses it outright (no cap then).
            self._ike_expire_at = min(cap, max(now, self._ike_rekey_at) + self.config.retransmit_timeout_s)
            self._count("ike_expiry_deferred")
        if self._ike_expire_at is not None and now >= self._ike_expire_at:
            self._ike_expire_at = None
            # a replaced SA the peer never deleted (its Delete was lost: _await_peer_delete)
            self._count("rekeyed_sa_not_deleted" if self.successor is not None else "ike_lifetime_expired")
            self.delete(now)
            return
        # an IKE rekey that is due goes first: the Child SAs whose rekeys are due as well move to
        # the new IKE SA and are rekeyed there at once.  Child rekeys first (every 12 s in the lossy
        # campaign, each possibly retransmitted for long) could keep the IKE rekey waiting, or the
        # peer refusing it as busy, until the IKE SA's hard lifetime
        ike_due = self._ike_rekey_at is not None and now >= self._ike_rekey_at and not self._rekeying_ike
        for c in list(self.children.values()):
            if c.expire_at is not None and now >= c.expire_at and (c.rekey_at is not None or c.rekeyed):
                # as for the IKE SA above: its rekey is still owed (held up by a stuck exchange, or
                # refused by a busy peer), or it was rekeyed but the Delete that retires it is still
                # to come (ours stuck, or the peer's: it rekeyed it and our answer was lost, so the
                # peer has nothing else to send on yet): let that run first, for at most one
                # retransmission schedule
                if c.expire_cap is None:
                    c.expire_cap = c.expire_at + self._retransmit_span()
                if now < c.expire_cap:
                    c.expire_at = min(c.expire_cap, max(now, c.rekey_at or now) + self.config.retransmit_timeout_s)
                    self._count("child_expiry_deferred")
            if c.expire_at is not None and now >= c.expire_at:
                c.expire_at = None  # one Delete, even if the peer is slow to answer it
                self._count("child_expired")
                self.delete_child(c.inbound_spi, now, "expired")
            elif c.rekey_at is not None and now >= c.rekey_at and not c.rekeyed and not ike_due:
                c.rekey_at = None
                self.rekey_child(c.inbound_spi, now)
        if ike_due:
            self._ike_rekey_at = None
            self.rekey_ike(now)
        if self.config.dpd_delay_s > 0 and now >= self._last_recv + self.config.dpd_delay_s and not self._queue:
            self.dpd(now)

    # --- API calls ------------------------------------------------------------------------------

    def initiate(self, now: float, child: bool = True) -> None:
        """Start IKE_SA_INIT.  ``child=False``: no Child SA wanted now (childless if the peer
        supports RFC 6023, else the configured one rides in IKE_AUTH as usual)."""
        if not self.initiator or self.state != IkeState.INITIAL:
            raise LocalProtocolError(f"initiate() in state {self.state.value} (initiator={self.initiator})")
        self._created = now
        self._want_child = child
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

    def delete_child(self, inbound_spi: int, now: float, reason: str = "local") -> None:
        """Delete a Child SA; ``reason`` is what its ``ChildSaDeleted`` says ("local": asked for,
        "expired": its hard lifetime ran out before a rekey replaced it)."""
        self._child(inbound_spi)
        self._enqueue("delete_child", lambda t: self._start_delete_child(t, inbound_spi, reason))
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

    def __repr__(self) -> str:
        return (f"<IkeSa {self.config.name} {self.spi_i.hex()}_i {self.spi_r.hex()}_r "
                f"{'I' if self.initiator else 'R'} {self.state.value}>")

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
                return
            if len(data) > 16 and data[16] == Payload.SKF:
                whole = self._reassemble(msg, data, addr, now)
                if whole is None:
                    return
                msg = whole
            if msg.response:
                self._recv_response(msg, data, addr, now)
            else:
                self._recv_request(msg, data, addr, local, now)
        except IntegrityError:
            self._count("integrity")
        except RemoteProtocolError as exc:
            self._count("protocol_error")
            self.last_error = str(exc)

    def _reassemble(self, msg: m.Message, data: bytes, addr: Addr, now: float) -> m.Message | None:
        """One RFC 7383 fragment: check its message ID, authenticate it, collect it; the whole
        message (inner payloads decoded, ``decrypted`` set) once every fragment is in."""
        if self._cin is None or not self.frag_ok:
            self._count("fragment_unexpected")
            return None
        if msg.initiator == self.initiator:
            self._count("bad_flags")
            return None
        resent = not msg.response and self._last_response is not None and msg.msg_id == self._last_response[0]
        if msg.response:
            p = self._pending
            if p is None or msg.msg_id != p.msg_id or msg.exchange != p.exchange:
                self._count("unexpected_response")
                return None
        elif msg.msg_id != self._expect_id and not resent:
            self._count("bad_message_id")
            return None
        piece = frag.open_fragment(data, self._cin)  # IntegrityError: counted by the caller
        if resent:
            # a retransmitted fragmented request: answer once, on its first fragment (RFC 7383 2.6.1)
            if piece.number == 1:
                assert self._last_response is not None  # resent implies it
                self._sink.out.extend(self._last_response[1])
                self._count("duplicate_request")
            return None
        done = self._reasm.add(msg.response, msg.msg_id, piece, now, self._count)
        if done is None:
            return None
        first, inner = done
        try:
            payloads = m.decode_payloads(first, inner)
        except ParseError:
            self._count("fragment_reassembly_parse_error")
            return None
        self._count("reassembled")
        return m.Message(msg.spi_i, msg.spi_r, msg.exchange, msg.msg_id, msg.initiator, msg.response, payloads,
                         msg.version, decrypted=True)

    def _decrypt(self, msg: m.Message, data: bytes) -> list[m.AnyPayload]:
        if msg.decrypted:
            return msg.payloads
        if self._cin is None:
            raise RemoteProtocolError("encrypted message before keys exist")
        try:
            msg.payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
        except ParseError:
            # an unauthenticated message cannot earn a notify from us
            raise IntegrityError("malformed outer payloads") from None
        if not msg.payloads or not isinstance(msg.payloads[-1], m.SK):
            raise IntegrityError("no Encrypted payload")  # unauthenticated: no answer, no state change
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
            self._peer_resent(msg, now)
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
        if self._redundant and self.state == IkeState.ESTABLISHED:
            self._peer_uses_new_sa(msg, now)  # may decide a simultaneous IKE rekey for this SA
        try:
            if msg.exchange == Exchange.IKE_AUTH:
                self._recv_auth_request(msg, addr, local, now)
            elif self.state == IkeState.AUTH_SENT and msg.exchange == Exchange.CREATE_CHILD_SA:
                # the peer is established (our IKE_AUTH answer is late or lost) and already rekeys:
                # not now, rather than a refusal that fails its Child SA or its IKE rekey (2.25)
                self._send_response(msg, [m.Notification(Notify.TEMPORARY_FAILURE)], addr, local)
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

