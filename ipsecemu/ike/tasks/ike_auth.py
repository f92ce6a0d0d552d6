"""IKE_AUTH (RFC 7296 section 2.15) carrying the first Child SA -- or none (RFC 6023 childless
IKE SA: ``config.childless`` "force", or ``initiate(child=False)``, when both sides announced
CHILDLESS_IKEV2_SUPPORTED; the Child SA then follows by CREATE_CHILD_SA; a responder refuses a
childless IKE_AUTH with INVALID_SYNTAX when it did not announce support): pre-shared keys, or X.509
certificates (``config.certs``, see :mod:`ipsecemu.ike.certs`): CERT + AUTH signed with our key,
CERTREQ naming our CAs, the peer's chain and signature checked, its ID checked against its
certificate.  Both sides use the same method; a mismatch is AUTHENTICATION_FAILED.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the state and plumbing of ``core.SaCore`` (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

from .. import certs as x509auth
from .. import crypto
from .. import message as m
from ..consts import STATUS_NOTIFY_MIN, AuthMethod, Exchange, Notify, Payload, Protocol, notify_name
from ..events import (
    ChildSaEstablished,
    IkeSaEstablished,
    NatDetected,
)
from ..settings import Identity, IkeSaConfig
from ..states import IkeState
from .base import (
    KEY_PAD,
    Addr,
    _ChildNeg,
    _eq,
    _strip_ke,
    to_wire,
)
from .core import SaCore


class IkeAuthTask(SaCore):
    # --- IKE_AUTH ---------------------------------------------------------------------------------

    def _psk_auth(self, psk: bytes, signed: bytes, nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
        """RFC 7296 section 2.15: prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>)."""
        p = self._prf_id
        return crypto.prf(p, crypto.prf(p, psk, KEY_PAD), signed + nonce + crypto.prf(p, sk_p, id_body))

    def _signed_octets(self, init_msg: bytes, nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
        """RFC 7296 section 2.15: RealMessage | Nonce | prf(SK_p, ID')."""
        return init_msg + nonce + crypto.prf(self._prf_id, sk_p, id_body)

    def _auth_payloads(self, cfg: IkeSaConfig, init_msg: bytes, nonce: bytes, sk_p: bytes, id_body: bytes,
                       certreq: bool) -> tuple[list[m.AnyPayload], m.Auth]:
        """(CERT / CERTREQ payloads, AUTH payload) proving our identity with ``cfg``'s credentials."""
        if cfg.certs is None:
            return [], m.Auth(AuthMethod.PSK, self._psk_auth(cfg.psk, init_msg, nonce, sk_p, id_body))
        extra: list[m.AnyPayload] = [m.Cert(Payload.CERT, x509auth.CERT_X509_SIGNATURE, d) for d in cfg.certs.cert_payload_data()]
        if certreq and cfg.certs.cas:
            extra.append(m.Cert(Payload.CERTREQ, x509auth.CERT_X509_SIGNATURE, cfg.certs.certreq_data()))
        method, data = cfg.certs.sign(self._signed_octets(init_msg, nonce, sk_p, id_body),
                                      self.peer_sig_hashes)
        return extra, m.Auth(method, data)

    def _auth_ok(self, cfg: IkeSaConfig, msg: m.Message, idp: m.ID, auth: m.Auth, init_msg: bytes, nonce: bytes,
                 sk_p: bytes) -> bool:
        """Is ``auth`` a valid proof of identity ``idp`` for ``cfg``?  Reasons go to ``last_error``."""
        peer = Identity(idp.id_type, idp.data)
        if cfg.remote_id is not None and not cfg.remote_id.matches(peer):
            self.last_error = f"identity mismatch: peer identity {peer} is not the configured {cfg.remote_id}"
            return False
        if cfg.certs is None:
            if auth.method != AuthMethod.PSK:
                self.last_error = f"auth method mismatch: peer used auth method {auth.method}, we expect PSK"
                return False
            if not _eq(self._psk_auth(cfg.psk, init_msg, nonce, sk_p, idp.body()), auth.data):
                # the only thing left that differs is the secret itself (the IDs matched); never log it
                self.last_error = (f"PSK mismatch: the AUTH of peer identity {peer} does not verify with the PSK "
                                   f"of connection {cfg.name}")
                return False
            return True
        ders = [c.data for c in msg.get(m.Cert, Payload.CERT) if c.encoding == x509auth.CERT_X509_SIGNATURE]
        try:
            cert = cfg.certs.verify_chain(ders)
            if not any(Identity(t, d).matches(peer) for t, d in x509auth.cert_identities(cert)):
                raise x509auth.CertError(f"peer identity {peer} is not in its certificate")
            x509auth.verify(cert.public_key(), auth.method, auth.data,
                            self._signed_octets(init_msg, nonce, sk_p, idp.body()), frozenset())
        except x509auth.CertError as exc:
            self.last_error = f"certificate: {exc}"
            self._count("cert_auth_failed")
            return False
        return True

    def _send_auth_request(self, now: float) -> None:
        # after our IKE_SA_INIT completed (keys derived) on an SA started by initiate() (_first_child)
        assert self.keys is not None and self._first_child is not None
        cfg = self.config
        idi = m.ID(Payload.IDi, cfg.local_id.id_type, cfg.local_id.data)
        extra, auth = self._auth_payloads(cfg, self._init_req, self.nr, self.keys.sk_pi, idi.body(), True)
        payloads: list[m.AnyPayload] = [idi, *extra]
        if cfg.remote_id is not None:
            payloads.append(m.ID(Payload.IDr, cfg.remote_id.id_type, cfg.remote_id.data))
        payloads.append(auth)
        if cfg.initial_contact:
            payloads.append(m.Notification(Notify.INITIAL_CONTACT))
        if cfg.childless == "force" and not self.childless_ok:
            self.last_error = "childless=force but the peer does not support childless IKE SAs (RFC 6023)"
            self._close(now, "failed", Notify.INVALID_SYNTAX)
            return
        if cfg.childless == "force" or (not self._want_child and self.childless_ok):
            # RFC 6023: IKE_AUTH without SA/TSi/TSr; a wanted Child SA follows by CREATE_CHILD_SA
            self._first_child = None
            self._set_state(IkeState.AUTH_SENT)
            self._send_request(now, Exchange.IKE_AUTH, payloads, self._on_auth_response, "auth")
            return
        neg = self._first_child
        neg.proposals = _strip_ke(cfg.esp_proposals)
        payloads += self._child_request_payloads(neg)
        self._set_state(IkeState.AUTH_SENT)
        self._send_request(now, Exchange.IKE_AUTH, payloads, self._on_auth_response, "auth")

    def _child_request_payloads(self, neg: _ChildNeg) -> list[m.AnyPayload]:
        out: list[m.AnyPayload] = []
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
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED,
                        detail=f"the peer answered AUTHENTICATION_FAILED to our IKE_AUTH as {self.config.local_id} "
                               "(PSK, identity or certificate mismatch: the peer's log says which)")
            return
        idr, auth = msg.first(m.ID, Payload.IDr), msg.first(m.Auth)
        if idr is None or auth is None:
            t = errors[0].type if errors else Notify.INVALID_SYNTAX
            self._close(now, "failed", t, detail=f"the peer answered {notify_name(t)} to our IKE_AUTH" if errors
                        else "IKE_AUTH response without IDr or AUTH")
            return
        peer = Identity(idr.id_type, idr.data)
        assert self.keys is not None  # the response was decrypted with them
        if not self._auth_ok(self.config, msg, idr, auth, self._init_resp, self.ni, self.keys.sk_pr):
            # the responder thinks the SA is up: tell it (RFC 7296 section 2.21.2), then forget the SA
            note = m.Message(self.spi_i, self.spi_r, Exchange.INFORMATIONAL, self._next_id, self.initiator, False,
                             [m.Notification(Notify.AUTHENTICATION_FAILED), m.Delete(Protocol.IKE)])
            self._emit(self._encrypt(note))
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        self.remote_id = peer
        self._establish(now)
        if self._first_child is None:  # childless: the Child SA (if wanted) by CREATE_CHILD_SA
            if self._want_child:
                self._enqueue("create_child", lambda t: self._start_create_child(t, None))
            return
        self._finish_child(msg, self._first_child, self.ni, self.nr, b"", now)

    def _recv_auth_request(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        if self.initiator or self.state != IkeState.SA_INIT_DONE:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            return
        self.remote, self.local = addr, local  # the peer may have floated to 4500
        idi, auth = msg.first(m.ID, Payload.IDi), msg.first(m.Auth)
        if idi is None or auth is None:
            self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
            self._close(now, "failed", Notify.INVALID_SYNTAX, detail="IKE_AUTH request without IDi or AUTH")
            return
        peer = Identity(idi.id_type, idi.data)
        idr_req = msg.first(m.ID, Payload.IDr)
        cfg = self.config
        if self._config_lookup is not None:
            cfg = self._config_lookup(peer, Identity(idr_req.id_type, idr_req.data) if idr_req else None) or cfg
        assert self.keys is not None  # the request was decrypted with them
        if not self._auth_ok(cfg, msg, idi, auth, self._init_req, self.nr, self.keys.sk_pi):
            self._send_response(msg, [m.Notification(Notify.AUTHENTICATION_FAILED)], addr, local)
            self.config = cfg  # the connection the peer's identity selected names the failure
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        self.config, self.remote_id = cfg, peer
        self.peer_initial_contact = msg.notify(Notify.INITIAL_CONTACT) is not None
        idr = m.ID(Payload.IDr, cfg.local_id.id_type, cfg.local_id.data)
        extra, auth_p = self._auth_payloads(cfg, self._init_resp, self.ni, self.keys.sk_pr, idr.body(), False)
        payloads: list[m.AnyPayload] = [idr, *extra, auth_p]
        if msg.first(m.SA) is None and msg.first(m.TS, Payload.TSi) is None and msg.first(m.TS, Payload.TSr) is None:
            if not self.childless_ok:
                # RFC 6023: no Child SA although we did not announce support
                self._send_response(msg, [m.Notification(Notify.INVALID_SYNTAX)], addr, local)
                self.last_error = "IKE_AUTH without a Child SA, but we did not announce childless IKE SAs"
                self._close(now, "failed", Notify.INVALID_SYNTAX)
                return
            self._send_response(msg, payloads, addr, local)  # a childless IKE SA (RFC 6023)
            self._establish(now)
            self._count("childless")
            return
        child_payloads, child, fail = self._respond_child(msg, self.ni, self.nr, None, now, ike_auth=True)
        self._send_response(msg, payloads + child_payloads, addr, local)
        self._establish(now)
        if child is not None:
            self.children[child.inbound_spi] = child
            self._event(ChildSaEstablished, keys=child.keys)
        else:
            self._child_refused(fail, msg, ike_auth=True)

    def _establish(self, now: float) -> None:
        self._set_state(IkeState.ESTABLISHED)
        self._half_open_deadline = None
        self._last_recv = now
        assert self.proposal is not None  # chosen in IKE_SA_INIT, before IKE_AUTH
        self._event(IkeSaEstablished, local_id=str(self.config.local_id), remote_id=str(self.remote_id),
                    proposal=self.proposal.to_strongswan_string(), local=self.local, remote=self.remote,
                    nat_local=self.nat_local, nat_remote=self.nat_remote)
        if self.nat_local or self.nat_remote:
            self._event(NatDetected, local_behind_nat=self.nat_local, remote_behind_nat=self.nat_remote)
        self._schedule_ike_rekey(now)

    def _schedule_ike_rekey(self, now: float) -> None:
        c = self.config
        f, life = c.ike_rekey_fraction if c.ike_rekey_fraction is not None else c.rekey_fraction, c.ike_lifetime_s
        self._ike_rekey_at = now + life * f - self._jitter(life, c.ike_jitter_s) if f > 0 and life > 0 else None
        self._ike_expire_at = now + life if f > 0 and life > 0 else None
        # a rekey still owed at the hard lifetime (held up by our own exchange stuck in
        # retransmissions, or refused with TEMPORARY_FAILURE by a busy peer) may push it back by
        # at most one whole retransmission schedule: see IkeSa.handle_timer
        self._expire_cap = None if self._ike_expire_at is None else self._ike_expire_at + self._retransmit_span()

    def _retry_delay(self) -> float:
        """2-6 s from the injected rng, so two peers that refused each other do not collide again."""
        return 2.0 + 4.0 * int.from_bytes(self._rng(2), "big") / 65535

    def _jitter(self, span: float, most: float | None = None) -> float:
        """Up to ``most`` seconds (None: 10% of ``span``) earlier, from the injected rng, so both peers
        rarely collide."""
        top = span * 0.1 if most is None else min(most, span)
        return top * int.from_bytes(self._rng(2), "big") / 65535
