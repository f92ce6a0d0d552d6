"""The ``impair:`` setting of a lab link, and the values ``lab impair`` takes on its command line.

::

    links:
      - endpoints: [ce:msee1, msee1:ce]
        impair: {delay: 20ms, jitter: 5ms, loss: 1%, reorder: 2%, duplicate: 0.5%, corrupt: 0.1%, rate: 650mbit}
      - endpoints: [ce:msee2, msee2:ce]
        impair:
          a_to_b: {delay: 10ms}          # from endpoints[0] to endpoints[1]
          b_to_a: {delay: 30ms, loss: 2%}
      - endpoints: [hub:x, x:hub]
        impair: {}                       # no impairment yet: `lab impair` can set one at run time

Every value is optional.  Times take ns/us/ms/s, percentages a ``%`` (or a plain fraction 0..1),
rates bit/s with k/m/g (``650mbit``, ``1gbit``, ``10mbps``: bits, as tc writes them).  The element
(native/src/impair.c) runs between the two ends, so a declared link gets it at ``lab up``.  This
module imports nothing of the lab package, so ``topology`` can import it without a cycle.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ipsecemu.config.kit import Doc, FieldPath

__all__ = ["DIRECTIONS", "KEYS", "MAX_DELAY_NS", "Impair", "ImpairDir", "ImpairValueError", "parse_impair",
           "parse_value", "format_dir"]

KEYS = ("delay", "jitter", "loss", "reorder", "duplicate", "corrupt", "rate", "limit", "overhead")
DIRECTIONS = ("a_to_b", "b_to_a")
MAX_DELAY_NS = 4_000_000_000  # native/include/ipsecemu.h IE_IMP_MAX_DELAY_NS: the wheel's span
MAX_RATE_BPS = 400_000_000_000
MAX_LIMIT = 1 << 20

_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|ms|s)\s*$")
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(|k|m|g|t)(bit|bps|bit/s)?\s*$", re.I)
_PCT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
_TIME_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_RATE_MUL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class ImpairValueError(ValueError):
    """A bad value; the message says what was expected (the caller adds where)."""


@dataclass(frozen=True)
class ImpairDir:
    """One direction, in the C element's units (native/include/ipsecemu.h ie_imp_dir_cfg)."""

    delay_ns: int = 0
    jitter_ns: int = 0
    loss_ppm: int = 0
    reorder_ppm: int = 0
    duplicate_ppm: int = 0
    corrupt_ppm: int = 0
    rate_bps: int = 0
    limit: int = 0  # frames queued at most (0: the element's pool)
    rate_overhead: int = 0  # bytes added to each frame for the rate (negative: count less, as netem)

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name not in ("limit", "rate_overhead"))

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImpairDir:
        return cls(**{f.name: int(d.get(f.name, 0)) for f in fields(cls)})


@dataclass(frozen=True)
class Impair:
    a_to_b: ImpairDir = ImpairDir()
    b_to_a: ImpairDir = ImpairDir()

    def dirs(self) -> tuple[ImpairDir, ImpairDir]:
        return (self.a_to_b, self.b_to_a)


def _num(m: re.Match[str]) -> float:
    return float(m.group(1))


def parse_value(key: str, v: Any) -> int:
    """``key``'s value (a YAML scalar or a command-line string) in the element's unit."""
    if key not in KEYS:
        raise ImpairValueError(f"unknown setting (allowed: {', '.join(KEYS)})")
    if isinstance(v, bool) or v is None:
        raise ImpairValueError(f"must be a value, got {v!r}")
    if key in ("delay", "jitter"):
        if isinstance(v, int | float) and v == 0:
            return 0
        m = _TIME.match(str(v)) if isinstance(v, str) else None
        if not m:
            raise ImpairValueError(f"must be a time like 20ms, 500us or 1s, got {v!r}")
        ns = round(_num(m) * _TIME_NS[m.group(2)])
        if ns > MAX_DELAY_NS:
            raise ImpairValueError(f"{v} is more than the element's {MAX_DELAY_NS // 10**9} s")
        return ns
    if key in ("loss", "reorder", "duplicate", "corrupt"):
        if isinstance(v, int | float):
            frac = float(v)
        else:
            m = _PCT.match(str(v))
            if not m:
                raise ImpairValueError(f"must be a percentage like 1% or 0.5%, got {v!r}")
            frac = _num(m) / 100
        if not 0 <= frac <= 1:
            raise ImpairValueError(f"must be between 0% and 100%, got {v!r}")
        return round(frac * 1_000_000)
    if key == "rate":
        if isinstance(v, int) and v >= 0:
            bps = v
        else:
            m = _RATE.match(str(v)) if isinstance(v, str) else None
            if not m:
                raise ImpairValueError(f"must be a rate like 650mbit, 1gbit or 100kbit, got {v!r}")
            bps = round(_num(m) * _RATE_MUL[m.group(2).lower()])
        if bps > MAX_RATE_BPS:
            raise ImpairValueError(f"{v} is more than {MAX_RATE_BPS // 10**9} Gbit/s")
        if 0 < bps < 8000:
            raise ImpairValueError(f"{v} is less than 8 kbit/s (one frame would take seconds)")
        return bps
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", v):  # limit/overhead from a command line
        v = int(v)
    if key == "overhead":
        if isinstance(v, int) and -65535 <= v <= 65535:
            return v
        raise ImpairValueError(f"must be bytes per frame -65535..65535 (as netem's packetoverhead), got {v!r}")
    if isinstance(v, int) and 0 <= v <= MAX_LIMIT:  # limit
        return v
    raise ImpairValueError(f"must be a frame count 0..{MAX_LIMIT}, got {v!r}")


_FIELD = {"delay": "delay_ns", "jitter": "jitter_ns", "loss": "loss_ppm", "reorder": "reorder_ppm",
          "duplicate": "duplicate_ppm", "corrupt": "corrupt_ppm", "rate": "rate_bps", "limit": "limit",
          "overhead": "rate_overhead"}


def apply_values(base: ImpairDir, values: dict[str, Any]) -> ImpairDir:
    """``base`` with ``values`` (setting -> raw value) applied; raises ImpairValueError naming the setting."""
    changes = {}
    for k, v in values.items():
        try:
            changes[_FIELD[k] if k in _FIELD else k] = parse_value(k, v)
        except ImpairValueError as exc:
            raise ImpairValueError(f"{k}: {exc}") from None
    d = replace(base, **changes)
    if d.delay_ns + d.jitter_ns > MAX_DELAY_NS:
        raise ImpairValueError(f"delay + jitter: more than the element's {MAX_DELAY_NS // 10**9} s")
    return d


def _dir(doc: Doc, v: Any, path: FieldPath) -> ImpairDir:
    m = doc.mapping(v if v is not None else {}, path, "a mapping of impairments")
    changes = {}
    for k, val in m.items():
        try:
            changes[_FIELD[k] if k in _FIELD else str(k)] = parse_value(k, val)
        except ImpairValueError as exc:
            raise doc.error((*path, k), str(exc)) from None
    out = ImpairDir(**changes)
    if out.delay_ns + out.jitter_ns > MAX_DELAY_NS:
        raise doc.error((*path, "jitter"), f"delay + jitter is more than the element's {MAX_DELAY_NS // 10**9} s")
    return out


def parse_impair(doc: Doc, value: Any, path: FieldPath) -> Impair:
    """A link's ``impair:`` -> :class:`Impair`; errors carry file:line:field."""
    m = doc.mapping(value if value is not None else {}, path, "a mapping (delay, loss, rate... or a_to_b/b_to_a)")
    if any(k in DIRECTIONS for k in m):
        doc.keys(m, path, DIRECTIONS)
        return Impair(_dir(doc, m.get("a_to_b"), (*path, "a_to_b")), _dir(doc, m.get("b_to_a"), (*path, "b_to_a")))
    for k in m:
        if k not in KEYS:
            raise doc.error((*path, k), f"unknown field (allowed: {', '.join(KEYS + DIRECTIONS)})")
    d = _dir(doc, m, path)
    return Impair(d, d)


def format_dir(d: ImpairDir) -> str:
    """One line for humans: ``delay 20ms jitter 5ms loss 1% rate 650mbit`` (``none`` when idle)."""
    parts = []
    if d.delay_ns:
        parts.append(f"delay {_fmt_time(d.delay_ns)}")
    if d.jitter_ns:
        parts.append(f"jitter {_fmt_time(d.jitter_ns)}")
    for name, ppm in (("loss", d.loss_ppm), ("reorder", d.reorder_ppm), ("duplicate", d.duplicate_ppm),
                      ("corrupt", d.corrupt_ppm)):
        if ppm:
            parts.append(f"{name} {ppm / 10_000:g}%")
    if d.rate_bps:
        parts.append(f"rate {_fmt_rate(d.rate_bps)}")
    if d.rate_bps and d.rate_overhead:
        parts.append(f"overhead {d.rate_overhead:+d}B")
    if d.limit:
        parts.append(f"limit {d.limit}")
    return " ".join(parts) or "none"


def _fmt_time(ns: int) -> str:
    for unit, k in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= k:
            return f"{ns / k:g}{unit}"
    return f"{ns}ns"


def _fmt_rate(bps: int) -> str:
    for unit, k in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= k:
            return f"{bps / k:g}{unit}"
    return f"{bps}bit"
