"""One data-plane interface, two backends.

Both backends expose the same five classes (types from :mod:`ipsecemu.base.satypes`, their
Protocols and per-packet contract in :mod:`ipsecemu.dataplane.api`):

``EspOutbound(cfg: EspSaConfig)``
    ``encap(payload, next_header, *, iv=None) -> (Verdict, bytes)``: one ESP packet
    (SPI..ICV).  ``iv`` injects the IV (tests); by default AEAD IVs are the 8-byte big-endian
    full sequence number and CBC IVs are random.  ``encap_batch(payloads, next_header, *,
    ivs=None) -> list[(Verdict, bytes)]``.  ``next_seq`` (int), ``counters`` (SaCounters),
    ``poll_events() -> list[ExpireEvent]``.
``EspInbound(cfg: EspSaConfig)``
    ``decap(packet) -> DecapResult``, ``decap_batch(packets) -> list[DecapResult]``,
    ``counters``, ``poll_events()``.  Replay: check -> authenticate -> commit.
``EspInboundTable()``
    the inbound SAD by SPI: ``add(cfg)``, ``remove(spi)``, ``decap``/``decap_batch`` (unknown
    SPI -> Verdict.UNKNOWN_SA, counted in ``unknown_sa``), ``counters_for(spi)``.
``MacsecTx(secy: SecYConfig, sa: MacsecSaConfig)``
    ``protect(frame) -> (Verdict, bytes)``, ``protect_batch(frames)``, ``next_pn``,
    ``counters``, ``poll_events()`` (soft "pn" event at ``secy.pn_exhaustion_threshold`` for
    non-XPN, hard when the PN space ends).
``MacsecRx(secy: SecYConfig)``
    ``add_sa(sa)``, ``remove_sa(sci, an)``, ``validate(frame) -> ValidateResult``,
    ``validate_batch(frames)``, ``counters_for(sci, an)``, ``counters`` (SecY-wide drops such
    as not_protected / unknown_sa / bad_header).

``backend("reference" | "native" | "auto")`` returns the module that holds them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ipsecemu.base.errors import SystemSetupError

_BACKENDS = {
    "reference": "ipsecemu.dataplane.reference",
    "native": "ipsecemu.dataplane.native",
}


class BackendUnavailable(SystemSetupError):
    """The asked-for backend is not built or not known (the host lacks what it needs)."""


def backend(name: str = "auto") -> ModuleType:
    """Return the backend module; "auto" prefers the C fast path and falls back to Python."""
    if name == "auto":
        try:
            return backend("native")
        except BackendUnavailable:
            return backend("reference")
    if name not in _BACKENDS:
        raise BackendUnavailable(f"unknown data-plane backend {name!r} (reference, native, auto)")
    try:
        return importlib.import_module(_BACKENDS[name])
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {name} data-plane backend is not available ({exc}); run 'make build'"
        ) from exc
