"""IKE SA rekeying (RFC 7296 section 2.18): a new IkeSa takes over the Child SAs.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the SA's state and plumbing (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

from typing import Any

from .. import crypto
from .. import message as m
from ..consts import Exchange, Notify
from ..errors import RemoteProtocolError
from ..events import (
    IkeSaRekeyed,
)
from ..proposals import Proposal, check_selected, select
from ..states import IkeState
from .base import (
    Addr,
    _groups,
    _ike_suite,
    from_wire,
    to_wire,
)


class IkeRekeyTask:
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
                # refused (e.g. NO_PROPOSAL_CHOSEN): try again in 20-60 s; the hard lifetime still ends it
                self._count("rekey_failed")
                self._ike_rekey_at = now + 10 * self._retry_delay()
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
               proposal: Proposal) -> Any:
        """Build the IKE SA that replaces this one; Child SAs move over (no Child events)."""
        new = type(self)(self.config, initiator=we_initiated, local=self.local, remote=self.remote, rng=self._rng,
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
