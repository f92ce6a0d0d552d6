"""Failures that explain themselves: the IKE core's events turned into one log line each, naming
the connection, the peer's address, our role and the reason (the core's own text: PSK mismatch vs
identity mismatch vs certificate, both proposal lists on NO_PROPOSAL_CHOSEN, the peer's notify).

The core never logs (sans-I/O); it emits typed events that carry the reason, and this module words
them.  Key material is not in any event, so it cannot reach a line here.  A peer that fails the
same way again and again (a flood of bad IKE_SA_INITs, a misconfigured peer retrying every second)
gets one line per ``REPEAT_S`` per (connection, peer, reason), plus how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ipsecemu.ike.consts import notify_name
from ipsecemu.ike.events import (
    ChildSaFailed,
    Event,
    IkeSaDeleted,
    IkeSaRefused,
    IkeSaRekeyed,
    IkeSaRekeyFailed,
)

__all__ = ["REPEAT_S", "FailureLog", "describe"]

REPEAT_S = 10.0
# IKE SA ends that are no failure (an operator, the peer's orderly delete, a rekey, a reboot)
_ORDERLY = frozenset({"local", "remote", "rekeyed", "replaced"})


def _lists(ours: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    out = ""
    if ours:
        out += f"; ours: {', '.join(ours)}"
    if theirs:
        out += f"; theirs: {', '.join(theirs)}"
    return out


def _where(ev: Event) -> str:
    return f"peer {ev.peer[0]}, {ev.role}"


def describe(ev: Event) -> tuple[int, str, str] | None:
    """(log level, message, repeat key) for an event worth a line here; None for the others (the
    daemon logs establishment and Child SA changes itself)."""
    conn = ev.conn or "?"
    if isinstance(ev, IkeSaDeleted):
        if ev.reason == "rekeyed":
            return None
        level = logging.INFO if ev.reason in _ORDERLY else logging.WARNING
        why = ev.detail or (f"notify {notify_name(ev.notify)}" if ev.notify else "")
        return level, f"{conn}: IKE SA deleted ({ev.reason}): {_where(ev)}" + (f": {why}" if why else ""), ev.reason
    if isinstance(ev, IkeSaRefused):
        return (logging.WARNING, f"{conn}: IKE_SA_INIT refused ({notify_name(ev.notify)}): {_where(ev)}: "
                f"{ev.detail}{_lists(ev.ours, ev.theirs)}", f"refused {ev.notify}")
    if isinstance(ev, ChildSaFailed):
        return (logging.WARNING, f"{conn}: Child SA failed ({notify_name(ev.notify)}): {_where(ev)}, "
                f"{'our request' if ev.requested else 'their request'}: {ev.reason}{_lists(ev.ours, ev.theirs)}",
                f"child {ev.notify}")
    if isinstance(ev, IkeSaRekeyed):
        return (logging.INFO, f"{conn}: IKE SA rekeyed {ev.ike_spi_i.hex()}_i -> {ev.new_spi_i.hex()}_i: "
                f"{_where(ev)}, {ev.proposal}", "")
    if isinstance(ev, IkeSaRekeyFailed):
        return (logging.WARNING, f"{conn}: IKE SA rekey failed ({notify_name(ev.notify)}): {_where(ev)}: {ev.detail}",
                f"rekey {ev.notify}")
    return None


class FailureLog:
    """Logs :func:`describe` lines, repeated failures at most once per ``repeat_s`` (injected clock)."""

    def __init__(self, log: logging.Logger, *, clock: Callable[[], float] = time.monotonic,
                 repeat_s: float = REPEAT_S) -> None:
        self.log = log
        self.clock = clock
        self.repeat_s = repeat_s
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}  # key -> (logged at, suppressed since)

    def __call__(self, ev: Event) -> None:
        d = describe(ev)
        if d is None:
            return
        level, msg, kind = d
        if level < logging.WARNING or not kind:
            self.log.log(level, "%s", msg)
            return
        key, now = (ev.conn, ev.peer[0], kind), self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.repeat_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            msg += f" ({last[1]} more like it in the last {now - last[0]:.0f} s)"
        self.log.log(level, "%s", msg)
        self._last[key] = (now, 0)
        if len(self._last) > 4096:  # a flood from many addresses must not grow this without bound
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.repeat_s}
