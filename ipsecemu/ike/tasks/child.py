"""Child SAs: creation inside IKE_AUTH and by CREATE_CHILD_SA, rekeying (with PFS), and the
simultaneous-rekey rules of RFC 7296 section 2.8.1.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the state and plumbing of ``core.SaCore`` (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import EspSaConfig, Lifetime

from .. import crypto
from .. import message as m
from ..consts import STATUS_NOTIFY_MIN, Exchange, Notify, Payload, Protocol, notify_name
from ..errors import RemoteProtocolError
from ..events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaKeys,
    ChildSaRekeyed,
)
from ..proposals import Proposal, check_selected, select
from ..ts import TrafficSelector, narrow
from .base import (
    Addr,
    ChildSa,
    _ChildNeg,
    _first_group,
    _groups,
    _strip_ke,
    from_wire,
    to_wire,
)
from .core import SaCore


def _names(props: list[Proposal]) -> tuple[str, ...]:
    """Proposals as strongSwan strings, for events and logs."""
    return tuple(p.to_strongswan_string() for p in props)


class ChildTask(SaCore):
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
        assert self.keys is not None  # Child SAs come after IKE_SA_INIT derived the keys
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
        rekey_at = now + life * f - self._jitter(life, self.config.child_jitter_s) if f > 0 and life > 0 else None
        return ChildSa(in_spi, out_spi, keys, now, rekey_at, now + life if life > 0 else None)

    def _volume_lifetime(self) -> Lifetime:
        """Byte/packet limits for the data plane (its soft expire event should trigger rekey_child)."""
        hard_b = self.config.child_kilobytes * 1024
        hard_p = self.config.child_packets
        f = self.config.rekey_fraction if 0 < self.config.rekey_fraction < 1 else 0.9
        return Lifetime(soft_bytes=int(hard_b * f), hard_bytes=hard_b, soft_packets=int(hard_p * f),
                        hard_packets=hard_p)

    def _respond_child(self, msg: m.Message, ni: bytes, nr: bytes, rekey_of: ChildSa | None, now: float,
                       ike_auth: bool = False) -> tuple[list[m.AnyPayload], ChildSa | None, int]:
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
            self._refusal = "no common ESP proposal"
            return [m.Notification(Notify.NO_PROPOSAL_CHOSEN)], None, Notify.NO_PROPOSAL_CHOSEN
        ts_i = narrow(tsi.selectors, self.config.remote_ts)
        ts_r = narrow(tsr.selectors, self.config.local_ts)
        if not ts_i or not ts_r:
            self._refusal = (f"traffic selectors unacceptable: the peer asked "
                             f"{' '.join(map(str, tsi.selectors))} <-> {' '.join(map(str, tsr.selectors))}, we allow "
                             f"{' '.join(map(str, self.config.remote_ts))} <-> {' '.join(map(str, self.config.local_ts))}")
            return [m.Notification(Notify.TS_UNACCEPTABLE)], None, Notify.TS_UNACCEPTABLE
        gir = b""
        extra: list[m.AnyPayload] = []
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
            self._refusal = str(exc)
            return [m.Notification(exc.notify)], None, exc.notify
        payloads: list[m.AnyPayload] = [m.Notification(Notify.USE_TRANSPORT_MODE)] if transport else []
        payloads += [m.SA(to_wire([chosen], in_spi.to_bytes(4, "big"))), *extra,
                     m.TS(Payload.TSi, ts_i), m.TS(Payload.TSr, ts_r)]
        return payloads, child, 0

    def _child_refused(self, notify: int, msg: m.Message, ike_auth: bool = False) -> None:
        """We refused the peer's Child SA: an event with the reason and both ESP proposal lists.  A
        wrong KE group is no failure (the peer retries with the group we named)."""
        if notify == Notify.INVALID_KE_PAYLOAD:
            return
        sa = msg.first(m.SA)
        theirs = [p for p in from_wire(sa.proposals) if p.protocol == "esp"] if sa else []
        mine = self.config.esp_proposals
        if ike_auth:
            theirs, mine = _strip_ke(theirs), _strip_ke(mine)
        what = "first Child SA (IKE_AUTH)" if ike_auth else "Child SA"
        why = self._refusal or f"we answered {notify_name(notify)}"
        self._refusal = ""
        self._event(ChildSaFailed, notify=notify, reason=f"we refused the peer's {what}: {why}", requested=False,
                    ours=_names(mine), theirs=_names(theirs))

    def _finish_child(self, msg: m.Message, neg: _ChildNeg, ni: bytes, nr: bytes, gir: bytes,
                      now: float) -> ChildSa | None:
        """Initiator side: check the responder's choice, derive keys, emit events."""
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if errors:
            if errors[0].type == Notify.TEMPORARY_FAILURE and neg.rekey_of is not None:
                if neg.rekey_of.inbound_spi in self.children and not neg.rekey_of.rekeyed:
                    neg.rekey_of.rekey_at = now + self._retry_delay()  # RFC 7296 2.25: retry a bit later
                    self._count("rekey_retry")
                else:
                    # the peer rekeyed (or deleted) it meanwhile and refused ours: nothing failed
                    self._count("rekey_superseded")
                return None
            if errors[0].type == Notify.CHILD_SA_NOT_FOUND and neg.rekey_of is not None and (
                    neg.rekey_of.inbound_spi not in self.children or neg.rekey_of.rekeyed):
                # RFC 7296 2.25: the peer's crossing rekey won and already deleted the old SA
                self._count("rekey_superseded")
                return None
            t = errors[0].type
            self._event(ChildSaFailed, notify=t, reason=f"the peer refused our Child SA: it answered {notify_name(t)}",
                        requested=True, ours=_names(neg.proposals))
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
            self._event(ChildSaFailed, notify=Notify.INVALID_SYNTAX, requested=True, ours=_names(neg.proposals),
                        reason="bad Child SA answer: the peer chose a proposal or selectors we did not offer",
                        theirs=_names(props))
            return None
        mode = "transport" if msg.notify(Notify.USE_TRANSPORT_MODE) and self.config.mode == "transport" else "tunnel"
        try:
            child = self._make_child(props[0], neg.inbound_spi, int.from_bytes(props[0].spi, "big"), ni, nr, gir,
                                     True, tsi.selectors, tsr.selectors, mode, now)
        except RemoteProtocolError as exc:
            self._event(ChildSaFailed, notify=exc.notify, reason=str(exc), requested=True)
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

    def _start_create_child(self, now: float, rekey_of: ChildSa | None, local_ts: list[TrafficSelector] | None = None,
                            remote_ts: list[TrafficSelector] | None = None, group: int | None = None) -> None:
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
        payloads: list[m.AnyPayload] = []
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
                self._event(ChildSaFailed, notify=Notify.INVALID_SYNTAX, requested=True,
                            reason="bad CREATE_CHILD_SA answer: no Nonce, or no KE of our group")
                return
            if neg.ke is not None and kep is not None:
                try:
                    gir = neg.ke.shared_secret(kep.data)
                except RemoteProtocolError as exc:
                    self._event(ChildSaFailed, notify=exc.notify, reason=str(exc), requested=True)
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
        if self.successor is not None:
            # this IKE SA was rekeyed: a Child SA made here would vanish with it (RFC 7296 2.25)
            self._send_response(msg, [m.Notification(Notify.TEMPORARY_FAILURE)], addr, local)
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
        payloads, child, fail = self._respond_child(msg, nonce.data, nr, old, now)
        self._send_response(msg, payloads, addr, local)
        if child is None:
            self._child_refused(fail, msg)
            return
        self.children[child.inbound_spi] = child
        self._answered_child = (msg.msg_id, child)  # a resend of this request re-dates it (_peer_resent)
        neg = self._child_neg
        if old is not None and neg is not None and neg.rekey_of is old:
            neg.collision = (child, min(nonce.data, nr))
            self._count("child_rekey_collision")
        if old is not None:
            old.rekeyed = True
            self._event(ChildSaRekeyed, old_inbound_spi=old.inbound_spi, old_outbound_spi=old.outbound_spi,
                        keys=child.keys)
        else:
            self._event(ChildSaEstablished, keys=child.keys)
