"""INFORMATIONAL: Delete (IKE and Child SAs), liveness checks, and the answer every request gets.

A mixin of :class:`ipsecemu.ike.sa.IkeSa`: it uses the state and plumbing of ``core.SaCore`` (``_send_request``,
``_send_response``, ``_event``...), one concern per module as strongSwan splits its tasks."""

from __future__ import annotations

from .. import message as m
from ..consts import Exchange, Notify, Protocol
from ..events import (
    ChildSaDeleted,
)
from ..states import IkeState
from .base import (
    Addr,
)
from .core import SaCore


class InformationalTask(SaCore):
    # --- INFORMATIONAL ----------------------------------------------------------------------------

    def _recv_informational(self, msg: m.Message, addr: Addr, local: Addr, now: float) -> None:
        out: list[m.AnyPayload] = []
        if msg.notify(Notify.AUTHENTICATION_FAILED) is not None and msg.msg_id == 2 and not self.initiator:
            # the initiator refused our IKE_AUTH response (RFC 7296 section 2.21.2)
            self._send_response(msg, [], addr, local)
            self._close(now, "auth_failed", Notify.AUTHENTICATION_FAILED)
            return
        for d in msg.get(m.Delete):
            if d.protocol == Protocol.IKE:
                self._send_response(msg, [], addr, local)
                if self._ike_collision is not None:
                    # the peer resolved our simultaneous rekey before we could: its new SA won
                    self._collision_survivor(self._ike_collision[0], now)
                    self._ike_collision = None
                moved = self.successor is not None or self._redundant
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
        moved = self.successor is not None or self._redundant
        self._set_state(IkeState.DELETING)
        self._send_request(now, Exchange.INFORMATIONAL, [m.Delete(Protocol.IKE)],
                           lambda r, t: self._close(t, "rekeyed" if moved else "local", quiet_children=moved),
                           "delete")
