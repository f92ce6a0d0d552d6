"""MACsec SecY on the C path: ``MacsecTx`` (one SecY's current transmit SA), ``MacsecRx`` (its
receive SAs by SCI and AN) and the C MACsec timing loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ipsecemu.base.algorithms import C_MACSEC_CIPHER
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import (
    ExpireEvent,
    MacsecSaConfig,
    SaCounters,
    SecYConfig,
    ValidateResult,
    Verdict,
)
from ipsecemu.dataplane.native.cmodule import (
    DELIVER,
    HAS_SCI,
    VALIDATE,
    VERDICT,
    Batch,
    check_status,
    ffi,
    lib,
    pop_events,
    to_counters,
    tx_results,
)


def secy_cfg(secy: SecYConfig) -> Any:
    c = ffi.new("ie_secy_cfg *")
    c.include_sci = int(secy.include_sci)
    c.end_station = int(secy.end_station)
    c.confidentiality = int(secy.confidentiality)
    c.replay_protect = int(secy.replay_protect)
    c.replay_window = secy.replay_window
    c.validate = VALIDATE[secy.validate]
    # anything above 2^32 can never be reached (also not as XPN's threshold << 32)
    c.pn_exhaustion_threshold = min(max(secy.pn_exhaustion_threshold, 0), 1 << 33)
    return c


def macsec_sa_cfg(sa: MacsecSaConfig) -> tuple[Any, list[Any]]:
    c = ffi.new("ie_macsec_sa_cfg *")
    sak = ffi.new("uint8_t[]", bytes(sa.sak))
    salt = ffi.new("uint8_t[]", bytes(sa.salt) if sa.salt is not None else bytes(12))
    c.cipher = C_MACSEC_CIPHER[sa.cipher]
    c.sak = sak
    c.sak_len = len(sa.sak)
    c.sci = int.from_bytes(sa.sci, "big")
    c.an = sa.an
    c.ssci = sa.ssci or 0
    c.salt = salt
    c.next_pn = sa.next_pn
    return c, [sak, salt]


class MacsecTx:
    """The transmit side of one SecY with its current SA; only C owns the PN."""

    def __init__(self, secy: SecYConfig, sa: MacsecSaConfig) -> None:
        self.secy = secy
        self.sa = sa
        c, _keep = macsec_sa_cfg(sa)
        out = ffi.new("ie_macsec_tx **")
        check_status(lib.ie_macsec_tx_new(secy_cfg(secy), c, out), "MACsec TX SA")
        self._tx = ffi.gc(out[0], lib.ie_macsec_tx_free)

    @property
    def next_pn(self) -> int:
        return int(lib.ie_macsec_tx_next_pn(self._tx)) + int(lib.ie_macsec_tx_exhausted(self._tx))

    @property
    def counters(self) -> SaCounters:
        c = ffi.new("ie_counters *")
        lib.ie_macsec_tx_counters(self._tx, c)
        return to_counters(c)

    def poll_events(self) -> list[ExpireEvent]:
        return pop_events(lib.ie_macsec_tx_events, self._tx, self.sa.sci)

    def protect(self, frame: bytes) -> tuple[Verdict, bytes]:
        return self.protect_batch([frame])[0]

    def protect_batch(self, frames: Iterable[bytes]) -> list[tuple[Verdict, bytes]]:
        b = Batch(list(frames), lib.IE_MACSEC_HEADROOM, lib.IE_MACSEC_TAILROOM)
        lib.ie_macsec_protect(self._tx, b.pkts, b.n, b.verdicts)
        return tx_results(b)


class MacsecRx:
    """The receive side of one SecY: SAs keyed by (SCI, AN) in a C hash table."""

    def __init__(self, secy: SecYConfig) -> None:
        self.secy = secy
        out = ffi.new("ie_macsec_rx **")
        check_status(lib.ie_macsec_rx_new(secy_cfg(secy), out), "MACsec SecY")
        self._rx = ffi.gc(out[0], lib.ie_macsec_rx_free)

    def add_sa(self, sa: MacsecSaConfig) -> None:
        """Install (or replace, as when an AN is reused for a new SAK) a receive SA."""
        c, _keep = macsec_sa_cfg(sa)
        lib.ie_macsec_rx_remove_sa(self._rx, c.sci, sa.an)  # replacing is allowed
        check_status(lib.ie_macsec_rx_add_sa(self._rx, c), "MACsec RX SA")

    def _missing(self, sci: bytes, an: int) -> ConfigError:
        return ConfigError(f"sci/an: no receive SA for SCI {bytes(sci).hex()} AN {an}")

    def remove_sa(self, sci: bytes, an: int) -> None:
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_macsec_rx_remove_sa(self._rx, int.from_bytes(sci, "big"), an) != lib.IE_S_OK:
            raise self._missing(sci, an)

    def counters_for(self, sci: bytes, an: int) -> SaCounters:
        c = ffi.new("ie_counters *")
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_macsec_rx_sa_counters(self._rx, int.from_bytes(sci, "big"), an, c) != lib.IE_S_OK:
            raise self._missing(sci, an)
        return to_counters(c)

    def next_pn_for(self, sci: bytes, an: int) -> int:
        out = ffi.new("uint64_t *")
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_macsec_rx_next_pn(self._rx, int.from_bytes(sci, "big"), an, out) != lib.IE_S_OK:
            raise self._missing(sci, an)
        return int(out[0])

    @property
    def counters(self) -> SaCounters:
        c = ffi.new("ie_counters *")
        lib.ie_macsec_rx_counters(self._rx, c)
        return to_counters(c)

    def validate(self, frame: bytes) -> ValidateResult:
        return self.validate_batch([frame])[0]

    def validate_batch(self, frames: Iterable[bytes]) -> list[ValidateResult]:
        b = Batch(list(frames), 0, 0)
        lib.ie_macsec_validate(self._rx, b.pkts, b.n, b.verdicts)
        res = []
        outs = b.outputs()
        for i, v in enumerate(b.verdict_codes()):
            p = b.pkts[i]
            res.append(ValidateResult(
                VERDICT[v],
                outs[i] if p.flags & DELIVER else b"",
                p.sci.to_bytes(8, "big") if p.flags & HAS_SCI else b"",
                p.an,
                p.seq,
            ))
        return res



def bench_macsec(secy: SecYConfig, sa: MacsecSaConfig, size: int, batch: int,
                 iterations: int) -> tuple[float, float]:
    """Seconds spent in C protecting and validating ``iterations`` x ``batch`` frames of
    ``size`` bytes (Ethernet header included)."""
    c, _keep = macsec_sa_cfg(sa)
    ns = ffi.new("uint64_t[2]")
    bad = lib.ie_bench_macsec(secy_cfg(secy), c, size, batch, iterations, ns)
    if bad:
        raise RuntimeError(f"MACsec benchmark: {'setup failed' if bad < 0 else f'{bad} frames failed'}")
    return ns[0] / 1e9, ns[1] / 1e9
