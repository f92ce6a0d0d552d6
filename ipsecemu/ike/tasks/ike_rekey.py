"""IKE SA rekeying (RFC 7296 section 2.18): a new IkeSa takes over the Child SAs.

Simultaneous rekeys (RFC 7296 section 2.8.2): when the peer's rekey request arrives while ours
is in flight, we answer it (no TEMPORARY_FAILURE round trip); once our response is in, both new
SAs exist on both sides and the one whose exchange has the lowest of the four nonces loses.  Its
creator deletes it; the creator of the survivor deletes the old SA.  The Child SAs end up on the
survivor on both sides, and the loser's ``IkeSaDeleted`` says "rekeyed" (nothing was lost).  The
loser's ``IkeSaRekeyed`` is never announced by the side that created it.  A Delete for the IKE
SA while we rekey it simply wins (the SA is gone; our rekey with it).  Any other request on the
peer's new SA before our answer is in decides the collision for that SA: the peer uses it only as
the survivor (it won, or never saw our request), and the request must find the Child SAs there.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the state and plumbing of ``core.SaCore`` (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

from typing import Self

from .. import crypto
from .. import message as m
from ..consts import STATUS_NOTIFY_MIN, Exchange, Notify, Protocol, notify_name
from ..errors import RemoteProtocolError
from ..events import (
    IkeSaRekeyed,
    IkeSaRekeyFailed,
)
from ..proposals import Proposal, check_selected, select
from ..states import IkeState
from .base import (
    Addr,
    ChildSa,
    _groups,
    _ike_suite,
    from_wire,
    to_wire,
)
from .core import SaCore


class IkeRekeyTask(SaCore):
    # --- IKE SA rekey (RFC 7296 section 2.18) -------------------------------------------------------

    def _start_rekey_ike(self, now: float, group: int | None = None) -> None:
        if self.successor is not None:
            return  # the peer rekeyed this SA meanwhile: nothing left to do here
        self._rekeying_ike = True
        group = group or self._group
        ke = crypto.KeyExchange(group, self._rng)
        new_spi, ni = self._rng(8), self._nonce()
        payloads: list[m.AnyPayload] = [m.SA(to_wire(self.config.ike_proposals, new_spi)), m.Nonce(ni),
                                        m.KE(group, ke.public)]
        self._send_request(now, Exchange.CREATE_CHILD_SA, payloads,
                           lambda r, t: self._on_rekey_ike_response(r, t, new_spi, ni, ke), "rekey_ike")

    def _on_rekey_ike_response(self, msg: m.Message, now: float, new_spi: bytes, ni: bytes,
                               ke: crypto.KeyExchange) -> None:
        self._rekeying_ike = False
        collision, self._ike_collision = self._ike_collision, None
        # the peer's crossing rekey already took over (it used its new SA: _peer_uses_new_sa)
        lost_already = collision is None and self.successor is not None
        if (collision is not None or lost_already) and msg.first(m.SA) is None:
            # our request was refused but the peer's rekey went through: it is the survivor
            if collision is not None:
                self._collision_survivor(collision[0], now)
                self._count("rekey_collision_lost")
            return
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
                # refused (e.g. NO_PROPOSAL_CHOSEN): try again in 20-60 s; the hard lifetime still ends it
                self._count("rekey_failed")
                self._ike_rekey_at = now + 10 * self._retry_delay()
                self._expire_cap = None  # a refusal is no reason to keep the SA past its lifetime
                errs = [n.type for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
                self._event(IkeSaRekeyFailed, notify=errs[0] if errs else 0,
                            detail=(f"the peer answered {notify_name(errs[0])}" if errs else
                                    "the peer's answer is not a proposal we offered") +
                            f" (ours: {', '.join(p.to_strongswan_string() for p in self.config.ike_proposals)});"
                            f" retrying in {self._ike_rekey_at - now:.0f} s")
            return
        try:
            gir = ke.shared_secret(kep.data)
        except RemoteProtocolError as exc:
            self._count("rekey_failed")
            self._event(IkeSaRekeyFailed, notify=exc.notify, detail=f"the peer's KE: {exc}")
            return
        if lost_already or (collision is not None and min(ni, nonce.data) < collision[1]):
            # our exchange has the lowest nonce: our new SA is redundant, we delete it; the peer
            # deletes the old one
            ours = self._spawn(now, True, new_spi, props[0].spi, ni, nonce.data, gir, props[0], collision=True)
            if collision is not None:
                self._collision_survivor(collision[0], now)
            ours.delete(now)
            self._count("rekey_collision_lost")
            return
        self._spawn(now, True, new_spi, props[0].spi, ni, nonce.data, gir, props[0])
        if collision is not None:
            # ours survives (the Child SAs moved to it); the peer deletes its redundant SA, and if
            # that delete never comes (lost, or the peer never saw the collision) we do it ourselves
            peer_new = collision[0]
            peer_new._redundant_deadline = now + 4 * self.config.retransmit_timeout_s
            self._count("rekey_collision_won")
        self._queue.clear()
        self._enqueue("delete", self._start_delete_ike)

    def _recv_rekey_ike(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        sa, nonce, kep = msg.first(m.SA), msg.first(m.Nonce), msg.first(m.KE)
        if not (sa and nonce and kep):
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        p = self._pending
        collision = p is not None and p.kind == "rekey_ike" and self.successor is None \
            and self._ike_collision is None and self.state == IkeState.ESTABLISHED
        # a liveness check in flight or queued is no obstacle (strongSwan refuses only for Child SA
        # work): it carries nothing to strand, and on a lossy link one DPD retransmitted on the
        # 4 s x 1.8 schedule outlasts the rekey margin, so refusing would run the SA into its hard
        # lifetime while we cannot rekey it either (issue #13, the long lossy campaign)
        busy = (p is not None and p.kind != "dpd") or any(kind != "dpd" for kind, _ in self._queue)
        if not collision and (busy or self.state != IkeState.ESTABLISHED):
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
        new = self._spawn(now, False, chosen.spi, my_spi, nonce.data, nr, gir, chosen, collision=collision)
        self._answered_rekey = (msg.msg_id, new)
        if collision:
            self._ike_collision = (new, min(nonce.data, nr))
            new._collision_of = self
            self._count("rekey_collision")

    def _peer_resent(self, msg: m.Message, now: float) -> None:
        """The peer retransmitted a request we answered: our answer was lost, so the peer has not
        made its copy of what that answer creates and will date it from when an answer gets
        through.  We dated ours from our answer; left so, it would reach its rekey time and hard
        lifetime that much earlier than the peer's -- up to a whole retransmission schedule, more
        than the rekey margin of a short lifetime -- and its rekeys would meet a peer that is not
        ready (busy, or still waiting for IKE_AUTH) until ours expired (issue #13).  Date them from
        now instead: the IKE SA our answer to a rekey made, or this SA and its first Child SA when
        it was the IKE_AUTH answer."""
        if msg.exchange == Exchange.IKE_AUTH and not self.initiator and self.state == IkeState.ESTABLISHED:
            if self.successor is None and not self._redundant and not self._rekeying_ike:
                self._redate(now)
            for c in self.children.values():
                self._redate_child(c, now)
            self._count("auth_answer_resent")
            return
        if self._answered_child is not None and self._answered_child[0] == msg.msg_id:
            child = self._answered_child[1]
            if self.children.get(child.inbound_spi) is child:  # a Child SA our lost answer made
                self._redate_child(child, now)
                self._count("child_answer_resent")
            return
        if self._answered_rekey is None or self._answered_rekey[0] != msg.msg_id:
            return
        new = self._answered_rekey[1]
        if new.state != IkeState.ESTABLISHED or new.successor is not None or new._rekeying_ike:
            return  # already rekeyed again, or gone
        if new._redate(now):
            self._count("rekey_answer_resent")

    def _redate_child(self, c: ChildSa, now: float) -> None:
        """A Child SA's rekey time and hard lifetime as if it were made now (never earlier)."""
        life, f = self.config.child_lifetime_s, self.config.rekey_fraction
        if c.rekeyed or life <= 0:
            return
        if c.rekey_at is not None and f > 0:
            c.rekey_at = max(c.rekey_at, now + life * f - self._jitter(life, self.config.child_jitter_s))
        if c.expire_at is not None:
            c.expire_at = max(c.expire_at, now + life)

    def _redate(self, now: float) -> bool:
        """Rekey time and hard lifetime as if this SA were made now (never earlier than they are)."""
        rekey_at, expire_at = self._ike_rekey_at, self._ike_expire_at
        if rekey_at is None or expire_at is None:
            return False  # undecided collision (timers come when decided), or no timed rekey
        self._schedule_ike_rekey(now)
        self._ike_rekey_at = max(rekey_at, self._ike_rekey_at or rekey_at)
        self._ike_expire_at = max(expire_at, self._ike_expire_at or expire_at)
        return True

    def _peer_uses_new_sa(self, msg: m.Message, now: float) -> None:
        """A request on the peer's new SA while our half of a simultaneous rekey is unanswered.
        The peer only uses its new SA once it is the survivor for it (RFC 7296 2.8.2: it won on
        nonces, or it never saw our request and refuses or never answers it), so the collision
        is decided: the Child SAs move here now and the request (a Child SA Delete, a rekey...)
        sees them.  A Delete of this IKE SA itself is the peer retiring its losing SA instead."""
        old = self._collision_of
        if old is None or old._ike_collision is None or old._ike_collision[0] is not self:
            return
        if any(d.protocol == Protocol.IKE for d in msg.get(m.Delete)):
            return
        old._ike_collision = None
        old._collision_survivor(self, now)
        old._count("rekey_collision_lost")

    def _collision_survivor(self, new: SaCore, now: float) -> None:
        """A simultaneous rekey ended with the peer's new SA as the survivor: the Child SAs move
        to it, it becomes usable and is announced."""
        target = new
        while target.successor is not None:  # the peer may have rekeyed it again already
            target = target.successor
        target._adopt_children(self.children, now)
        self.children = {}
        new._redundant = False
        if new.successor is None:
            new._schedule_ike_rekey(now)
        self.successor = new
        self._queue.clear()  # as after any IKE rekey: nothing more is started on the old SA
        self._await_peer_delete(now)  # the peer deletes this old SA
        self._event(IkeSaRekeyed, new_spi_i=new.spi_i, new_spi_r=new.spi_r,
                    proposal=new.proposal.to_strongswan_string() if new.proposal else "")

    def _await_peer_delete(self, now: float) -> None:
        """This SA was replaced and the peer is the one to delete it (or we are, with a Delete
        already queued).  No rekey any more; but if the peer's Delete never arrives (every
        retransmission lost, so the peer gave up and forgot the SA) we would keep a stale IKE SA
        for ever: once the peer's whole retransmission schedule (estimated with ours) has passed,
        ``handle_timer`` deletes it itself.  Two crossing Deletes are harmless (each answers the
        other's), and a Delete the peer no longer answers times out, which also ends the SA."""
        self._ike_rekey_at = None
        self._ike_expire_at = now + self._retransmit_span()

    def _spawn(self, now: float, we_initiated: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes, gir: bytes,
               proposal: Proposal, collision: bool = False) -> Self:
        """Build the IKE SA that replaces this one; Child SAs move over (no Child events).  In a
        collision they stay here until it is resolved: the new SA is neither announced nor usable
        (``_redundant``) unless it turns out to be the survivor."""
        new = type(self)(self.config, initiator=we_initiated, local=self.local, remote=self.remote, rng=self._rng,
                    sink=self._sink, config_lookup=self._config_lookup)
        new.spi_i, new.spi_r, new.ni, new.nr, new.proposal = spi_i, spi_r, ni, nr, proposal
        new._group = proposal.ke.id if proposal.ke else self._group
        encr, bits, prf, integ = _ike_suite(proposal)
        assert self.keys is not None  # only an established SA is rekeyed
        # SKEYSEED with the old SA's PRF and SK_d, then prf+ of the new PRF (as strongSwan does)
        seed = crypto.rekey_skeyseed(self._prf_id, self.keys.sk_d, gir, ni, nr)
        new._install_keys(crypto.derive_ike_keys(prf, encr, bits, integ, seed, ni, nr, spi_i, spi_r), prf)
        new.nat_local, new.nat_remote, new.remote_id = self.nat_local, self.nat_remote, self.remote_id
        if collision:
            new._redundant = True  # until resolved: no API calls, no timers, a Delete of it is no outage
        else:
            new._adopt_children(self.children, now)
            self.children = {}
            self.successor = new
            self._await_peer_delete(now)  # this SA is on its way out
        new._set_state(IkeState.ESTABLISHED)
        new._created = new._last_recv = now
        if collision:
            new._ike_rekey_at = new._ike_expire_at = None
        else:
            new._schedule_ike_rekey(now)
        self._sink.new_sas.append(new)
        if not collision:
            self._event(IkeSaRekeyed, new_spi_i=spi_i, new_spi_r=spi_r, proposal=proposal.to_strongswan_string())
        return new
