"""IKE_SA_INIT (RFC 7296 section 1.2): proposals, KE, nonces, NAT detection, COOKIE and
INVALID_KE_PAYLOAD retries; key derivation; the IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383) and
CHILDLESS_IKEV2_SUPPORTED (RFC 6023) notifies.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the state and plumbing of ``core.SaCore`` (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

import hashlib

from .. import crypto
from .. import message as m
from ..certs import CERT_X509_SIGNATURE, OUR_HASHES
from ..consts import STATUS_NOTIFY_MIN, Exchange, Notify, Payload, notify_name
from ..errors import ParseError, RemoteProtocolError
from ..events import IkeSaRefused
from ..proposals import check_selected, select
from ..states import IkeState
from .base import (
    NATT_PORT,
    Addr,
    _groups,
    _ike_suite,
    _Request,
    from_wire,
    natd_hash,
    to_wire,
)
from .core import SaCore


class IkeInitTask(SaCore):
    # --- IKE_SA_INIT ------------------------------------------------------------------------------

    def _natd_payloads(self, spi_r: bytes, local: Addr, remote: Addr) -> list[m.AnyPayload]:
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

    def _sa_init_extras(self, response: bool) -> list[m.AnyPayload]:
        """Optional IKE_SA_INIT payloads: IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383; a responder
        only echoes it), and with certificates the RFC 7427 hash algorithms and, in a response,
        a CERTREQ naming our CAs."""
        out: list[m.AnyPayload] = []
        certs = self.config.certs
        if certs is not None and response and certs.cas:
            out.append(m.Cert(Payload.CERTREQ, CERT_X509_SIGNATURE, certs.certreq_data()))
        if self.config.fragmentation and (not response or self.frag_ok):
            out.append(m.Notification(Notify.IKEV2_FRAGMENTATION_SUPPORTED))
        if self.config.childless != "never":  # RFC 6023: both roles announce it independently
            out.append(m.Notification(Notify.CHILDLESS_IKEV2_SUPPORTED))
        if certs is not None and certs.rfc7427:
            out.append(m.Notification(Notify.SIGNATURE_HASH_ALGORITHMS,
                                      b"".join(h.to_bytes(2, "big") for h in OUR_HASHES)))
        return out

    def _read_sa_init_extras(self, msg: m.Message) -> None:
        n = msg.notify(Notify.SIGNATURE_HASH_ALGORITHMS)
        if n is not None:
            self.peer_sig_hashes = frozenset(int.from_bytes(n.data[i : i + 2], "big")
                                             for i in range(0, len(n.data) - 1, 2))
        self.frag_ok = self.config.fragmentation and msg.notify(Notify.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        # RFC 6023: what counts is the responder's announcement (strongSwan's initiator sends none)
        self.childless_ok = self.config.childless != "never" and \
            (not self.initiator or msg.notify(Notify.CHILDLESS_IKEV2_SUPPORTED) is not None)

    def _ours(self) -> str:
        """Our IKE proposals, for a failure's detail."""
        return ", ".join(p.to_strongswan_string() for p in self.config.ike_proposals)

    def _send_sa_init(self, now: float) -> None:
        if self._ke is None or self._ke.group != self._group:
            self._ke = crypto.KeyExchange(self._group, self._rng)
        if not self.ni:
            self.ni = self._nonce()
        payloads: list[m.AnyPayload] = [m.Notification(Notify.COOKIE, self._cookie)] if self._cookie else []
        payloads += [
            m.SA(to_wire(self.config.ike_proposals, b"")),
            m.KE(self._group, self._ke.public),
            m.Nonce(self.ni),
            *self._natd_payloads(bytes(8), self.local, self.remote),
            *self._sa_init_extras(False),
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
                self._close(now, "failed", Notify.COOKIE, detail="the peer asked for a COOKIE twice")
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
                self._close(now, "no_proposal", Notify.INVALID_KE_PAYLOAD,
                            detail=f"the peer wants KE group {want}, which none of our IKE proposals has "
                                   f"(ours: {self._ours()})")
            return
        errors = [n for n in msg.get(m.Notification) if n.type < STATUS_NOTIFY_MIN]
        if errors:
            t = errors[0].type
            self._close(now, "no_proposal" if t == Notify.NO_PROPOSAL_CHOSEN else "failed", t,
                        detail=f"the peer answered {notify_name(t)} to our IKE_SA_INIT (ours: {self._ours()})")
            return
        sa, ke, nonce = msg.first(m.SA), msg.first(m.KE), msg.first(m.Nonce)
        props = from_wire(sa.proposals) if sa else []
        if not (sa and ke and nonce) or len(props) != 1 or not check_selected(self.config.ike_proposals, props[0]):
            # e.g. INTEG NONE for a classic cipher: not something we offered (RFC 7296 section 2.7)
            self.last_error = ("IKE_SA_INIT response: the selected proposal is not one we offered"
                               if sa and ke and nonce and len(props) == 1
                               else "IKE_SA_INIT response without exactly one SA proposal, KE and Nonce")
            self._count("bad_sa_init_response")
            self._close(now, "failed", Notify.INVALID_SYNTAX)
            return
        chosen = props[0]
        if chosen.ke is None or chosen.ke.id != self._group or ke.group != self._group:
            self._close(now, "failed", Notify.INVALID_KE_PAYLOAD)
            return
        self.spi_r = msg.spi_r
        self.nr = nonce.data
        self._init_resp = data
        self._read_sa_init_extras(msg)
        self.proposal = chosen
        assert self._ke is not None  # _send_sa_init made it for the request this answers
        try:
            gir = self._ke.shared_secret(ke.data)
        except RemoteProtocolError as exc:
            self._close(now, "failed", exc.notify)
            return
        try:
            self._derive_keys(gir)
        except RemoteProtocolError as exc:
            self.last_error = f"IKE_SA_INIT response: {exc}"
            self._close(now, "failed", exc.notify or Notify.NO_PROPOSAL_CHOSEN)
            return
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
            # RFC 7296 2.21.1: the (unprotected) answer to a request we cannot parse; no state is kept
            self._send_plain(m.Message(self.spi_i, bytes(8), Exchange.IKE_SA_INIT, 0, False, True,
                                       [m.Notification(exc.notify or Notify.INVALID_SYNTAX, exc.notify_data)]),
                             addr, local)
            self.last_error = f"IKE_SA_INIT request: {exc}"
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

        offered = [p for p in from_wire(sa.proposals) if p.protocol == "ike"]
        chosen = select(self.config.ike_proposals, offered)
        if chosen is None or chosen.ke is None:
            refuse(Notify.NO_PROPOSAL_CHOSEN)
            # no IKE SA ever existed; the event names the connection whose proposals were compared
            self._event(IkeSaRefused, notify=Notify.NO_PROPOSAL_CHOSEN, detail="no common IKE proposal",
                        ours=tuple(p.to_strongswan_string() for p in self.config.ike_proposals),
                        theirs=tuple(p.to_strongswan_string() for p in offered))
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
        self._read_sa_init_extras(msg)
        payloads += self._sa_init_extras(True)
        self._init_req = data
        self._init_resp = self._send_plain(
            m.Message(self.spi_i, self.spi_r, Exchange.IKE_SA_INIT, 0, False, True, payloads), addr, local)
        self._derive_keys(gir)
        self._created = now
        self._expect_id = 1
        self._set_state(IkeState.SA_INIT_DONE)
        self._half_open_deadline = now + self.config.half_open_timeout_s

    def _derive_keys(self, gir: bytes) -> None:
        assert self.proposal is not None  # both IKE_SA_INIT handlers set it first
        encr, bits, prf, integ = _ike_suite(self.proposal)
        seed = crypto.skeyseed(prf, self.ni, self.nr, gir)
        self._install_keys(crypto.derive_ike_keys(prf, encr, bits, integ, seed, self.ni, self.nr,
                                                  self.spi_i, self.spi_r), prf)

    def _install_keys(self, keys: crypto.IkeKeys, prf_id: int) -> None:
        assert self.proposal is not None  # set before keys are derived (IKE_SA_INIT or _spawn)
        encr, _bits, _prf, integ = _ike_suite(self.proposal)
        self.keys, self._prf_id = keys, prf_id
        ci = crypto.SkCipher(encr, keys.sk_ei, integ, keys.sk_ai)
        cr = crypto.SkCipher(encr, keys.sk_er, integ, keys.sk_ar)
        self._cout, self._cin = (ci, cr) if self.initiator else (cr, ci)
