"""IKE SA states and the allowed transitions, as data (h11 style) so they can be checked and drawn."""

from __future__ import annotations

import enum


class IkeState(enum.Enum):
    INITIAL = "initial"
    SA_INIT_SENT = "sa_init_sent"  # initiator: waiting for the IKE_SA_INIT response
    SA_INIT_DONE = "sa_init_done"  # responder: half-open, waiting for IKE_AUTH
    AUTH_SENT = "auth_sent"  # initiator: waiting for the IKE_AUTH response
    ESTABLISHED = "established"
    DELETING = "deleting"  # our Delete is in flight
    CLOSED = "closed"


S = IkeState

#: (from, to) -> what drives it
TRANSITIONS: dict[tuple[IkeState, IkeState], str] = {
    (S.INITIAL, S.SA_INIT_SENT): "initiate()",
    (S.SA_INIT_SENT, S.SA_INIT_SENT): "COOKIE / INVALID_KE_PAYLOAD: retry",
    (S.SA_INIT_SENT, S.AUTH_SENT): "IKE_SA_INIT response",
    (S.SA_INIT_SENT, S.CLOSED): "error notify / retransmit limit",
    (S.INITIAL, S.SA_INIT_DONE): "IKE_SA_INIT request (responder)",
    (S.INITIAL, S.CLOSED): "IKE_SA_INIT request refused (responder)",
    (S.SA_INIT_DONE, S.ESTABLISHED): "IKE_AUTH request, AUTH ok",
    (S.SA_INIT_DONE, S.CLOSED): "AUTH failed / half-open timeout",
    (S.AUTH_SENT, S.ESTABLISHED): "IKE_AUTH response, AUTH ok",
    (S.AUTH_SENT, S.CLOSED): "AUTHENTICATION_FAILED / bad AUTH / retransmit limit",
    (S.INITIAL, S.ESTABLISHED): "IKE SA created by rekeying",
    (S.ESTABLISHED, S.DELETING): "delete() / rekeyed",
    (S.ESTABLISHED, S.CLOSED): "Delete from peer / DPD or retransmit limit",
    (S.DELETING, S.CLOSED): "Delete answered / retransmit limit",
}


def check(src: IkeState, dst: IkeState) -> None:
    if (src, dst) not in TRANSITIONS:
        raise AssertionError(f"illegal IKE state transition {src.value} -> {dst.value}")


def dot() -> str:
    """Graphviz source of the state machine."""
    lines = ["digraph ike {"]
    for (a, b), why in TRANSITIONS.items():
        lines.append(f'  {a.value} -> {b.value} [label="{why}"];')
    return "\n".join(lines + ["}"])
