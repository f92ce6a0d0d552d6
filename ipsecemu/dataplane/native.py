"""The native (C, cffi) data-plane backend: the only module importing the C extension.

Same five classes, signatures and per-packet semantics as the reference backend (see
:mod:`ipsecemu.dataplane` and :mod:`ipsecemu.dataplane.api`).  Single-packet methods call the
batch C functions with n=1; ``*_batch`` methods hand the whole list to C in one call.  ESP
algorithms the C code does not implement (3DES, ChaCha20-Poly1305, NULL, HMAC-MD5) are served
transparently by the reference classes.

``IPSECEMU_NATIVE_ASAN=1`` selects the AddressSanitizer/UBSan build (``_native_asan``), which
needs ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; ``IPSECEMU_NATIVE_ASAN=clang`` the clang
one (``_native_asan_clang``), with ``LD_PRELOAD=$(clang -print-file-name=libclang_rt.asan-x86_64.so)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ipsecemu.base.algorithms import C_ESP_ENCR, C_ESP_INTEG, C_MACSEC_CIPHER, ESP_ENCR
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import (
    DecapResult,
    EspSaConfig,
    ExpireEvent,
    MacsecSaConfig,
    SaCounters,
    SecYConfig,
    ValidateResult,
    Verdict,
)
from ipsecemu.esp import reference  # the fallback for algorithms the C path lacks

if os.environ.get("IPSECEMU_NATIVE_ASAN") == "1":
    from ipsecemu.dataplane._native_asan import ffi, lib  # type: ignore[import-not-found]
elif os.environ.get("IPSECEMU_NATIVE_ASAN") == "clang":
    from ipsecemu.dataplane._native_asan_clang import ffi, lib  # type: ignore[import-not-found]
else:
    from ipsecemu.dataplane._native import ffi, lib  # type: ignore[import-not-found]

__all__ = [
    "EspOutbound", "EspInbound", "EspInboundTable", "MacsecTx", "MacsecRx",
    "ABI_VERSION", "bench_esp", "bench_macsec", "native_esp_supported", "ffi", "lib",
    "EspUdpLoop", "parse_ike_record", "MacsecLinkLoop",
]

#: The C API version this wrapper was written against.
ABI_VERSION = 1
if lib.ie_abi_version() != ABI_VERSION:  # a stale .so from an older checkout
    raise ImportError(
        f"ipsecemu native module ABI {lib.ie_abi_version()} != {ABI_VERSION}; run 'make build'"
    )

_U64 = (1 << 64) - 1
_COUNTER_FIELDS = tuple(f.name for f in dataclasses.fields(SaCounters))

# the C enum values come from the algorithm registry (a unit test checks them against ipsecemu.h)
_ENCR = C_ESP_ENCR
_INTEG = C_ESP_INTEG
_MACSEC_CIPHER = C_MACSEC_CIPHER
_VALIDATE = {"strict": lib.IE_VALIDATE_STRICT, "check": lib.IE_VALIDATE_CHECK,
             "disabled": lib.IE_VALIDATE_DISABLED}
_EV_REASON = {lib.IE_EV_BYTES: "bytes", lib.IE_EV_PACKETS: "packets", lib.IE_EV_SEQ: "seq",
              lib.IE_EV_PN: "pn"}
_STATUS = {lib.IE_S_EINVAL: "invalid configuration", lib.IE_S_ENOMEM: "out of memory",
           lib.IE_S_ECRYPTO: "libcrypto refused the key", lib.IE_S_EEXIST: "already exists",
           lib.IE_S_ENOENT: "not found"}
_VERDICT = tuple(Verdict(i) for i in range(len(Verdict)))
_DELIVER = lib.IE_PKT_DELIVER
_HAS_SCI = lib.IE_PKT_HAS_SCI
_TFC_DUMMY = lib.IE_TFC_DUMMY
_OK = lib.IE_OK
_TOO_SHORT = lib.IE_TOO_SHORT


def native_esp_supported(cfg: EspSaConfig) -> bool:
    """True when the C path implements this SA's algorithms (else the reference serves it)."""
    return cfg.encr in _ENCR and cfg.integ in _INTEG


def _check(status: int, what: str) -> None:
    if status != lib.IE_S_OK:
        raise ConfigError(f"{what}: {_STATUS.get(status, f'error {status}')}")


def _counters(c: Any) -> SaCounters:
    return SaCounters(**{name: getattr(c, name) for name in _COUNTER_FIELDS})


def _add_counters(a: SaCounters, b: SaCounters) -> SaCounters:
    return SaCounters(**{n: getattr(a, n) + getattr(b, n) for n in _COUNTER_FIELDS})


def _events(pop: Any, handle: Any, key: int | bytes, *args: Any) -> list[ExpireEvent]:
    codes = ffi.new("uint8_t[]", 16)
    n = pop(handle, *args, codes, 16)
    return [
        ExpireEvent(key, "soft" if codes[i] & lib.IE_EV_SOFT else "hard", _EV_REASON[codes[i] & 15])
        for i in range(n)
    ]


def _u64(value: int, what: str) -> int:
    if value < 0:
        raise ConfigError(f"{what}: must be >= 0, got {value}")
    return min(value, _U64)


def _esp_cfg(cfg: EspSaConfig, initial: int) -> tuple[Any, list[Any]]:
    """The C config for one SA; the second item keeps the key buffers alive for the call."""
    c = ffi.new("ie_esp_cfg *")
    enc_key = ffi.new("uint8_t[]", bytes(cfg.enc_key))
    integ_key = ffi.new("uint8_t[]", bytes(cfg.integ_key) or b"\0")
    c.spi = cfg.spi
    c.encr = _ENCR[cfg.encr]
    c.integ = _INTEG[cfg.integ]
    c.enc_key = enc_key
    c.enc_key_len = len(cfg.enc_key)
    c.integ_key = integ_key
    c.integ_key_len = len(cfg.integ_key)
    c.esn = int(cfg.esn)
    c.replay_window = cfg.replay_window
    lt = cfg.lifetime
    c.soft_bytes = _u64(lt.soft_bytes, "lifetime.soft_bytes")
    c.hard_bytes = _u64(lt.hard_bytes, "lifetime.hard_bytes")
    c.soft_packets = _u64(lt.soft_packets, "lifetime.soft_packets")
    c.hard_packets = _u64(lt.hard_packets, "lifetime.hard_packets")
    c.seq_soft_margin = _u64(cfg.seq_soft_margin, "seq_soft_margin")
    c.initial_seq = initial
    return c, [enc_key, integ_key]


class _Batch:
    """n packets back to back in one buffer, each with head/tail room, plus C descriptors."""

    __slots__ = ("data", "base", "pkts", "verdicts", "n", "_ivs")

    def __init__(self, items: Sequence[bytes], head: int, tail: int, next_header: int = 0) -> None:
        n = self.n = len(items)
        # [head] item0 [tail+head] item1 ... [tail]: one join, one copy of the payloads
        self.data = bytearray(head) + bytes(tail + head).join(items) + bytearray(tail + 1)
        self.base = ffi.from_buffer("uint8_t[]", self.data)
        self.pkts = ffi.new("ie_pkt[]", max(n, 1))
        self.verdicts = ffi.new("uint8_t[]", max(n, 1))
        self._ivs: Any = None
        lens = ffi.new("uint32_t[]", [len(x) for x in items] or [0])
        lib.ie_pkts_layout(self.pkts, n, self.base, lens, head, tail, next_header)

    def set_ivs(self, ivs: Sequence[bytes | None], iv_len: int) -> None:
        self._ivs = ffi.new("uint8_t[]", b"".join(iv if iv is not None else bytes(iv_len) for iv in ivs))
        for i, iv in enumerate(ivs):
            if iv is not None:
                self.pkts[i].iv = self._ivs + i * iv_len

    def verdict_codes(self) -> list[int]:
        return ffi.unpack(self.verdicts, self.n)  # type: ignore[no-any-return]

    def outputs(self) -> list[bytes]:
        """Every packet's current [off, off+len) bytes (callers pick the delivered ones)."""
        spans = ffi.new("uint64_t[]", 2 * max(self.n, 1))
        lib.ie_pkts_spans(self.pkts, self.n, self.base, spans)
        sp = ffi.unpack(spans, 2 * self.n)
        mv = memoryview(self.data)
        return [mv[sp[k]:sp[k] + sp[k + 1]].tobytes() for k in range(0, 2 * self.n, 2)]


def _tx_results(b: _Batch) -> list[tuple[Verdict, bytes]]:
    codes = b.verdict_codes()
    outs = b.outputs()
    return [(_VERDICT[v], outs[i] if v == _OK else b"") for i, v in enumerate(codes)]


# ---------------------------------------------------------------------------- ESP


class EspOutbound:
    """Outbound ESP SA on the C path (reference fallback for algorithms C lacks)."""

    def __init__(self, cfg: EspSaConfig, *, initial_seq: int = 1) -> None:
        self.cfg = cfg
        self.max_seq = _U64 if cfg.esn else (1 << 32) - 1
        if not 1 <= initial_seq <= self.max_seq:
            raise ConfigError(f"initial_seq: must be 1..{self.max_seq}, got {initial_seq}")
        if cfg.seq_soft_margin < 0:
            raise ConfigError(f"seq_soft_margin: must be >= 0, got {cfg.seq_soft_margin}")
        self._ref: Any = None
        self._sa: Any = None
        if not native_esp_supported(cfg):
            self._ref = reference.EspOutbound(cfg, initial_seq=initial_seq)
            return
        self._iv_len = ESP_ENCR[cfg.encr][2]
        c, _keep = _esp_cfg(cfg, initial_seq)
        out = ffi.new("ie_esp_out **")
        _check(lib.ie_esp_out_new(c, out), "ESP outbound SA")
        self._sa = ffi.gc(out[0], lib.ie_esp_out_free)

    @property
    def next_seq(self) -> int:
        if self._ref is not None:
            return int(self._ref.next_seq)
        return int(lib.ie_esp_out_next_seq(self._sa)) + int(lib.ie_esp_out_exhausted(self._sa))

    @property
    def counters(self) -> SaCounters:
        if self._ref is not None:
            return self._ref.counters  # type: ignore[no-any-return]
        c = ffi.new("ie_counters *")
        lib.ie_esp_out_counters(self._sa, c)
        return _counters(c)

    def poll_events(self) -> list[ExpireEvent]:
        if self._ref is not None:
            return self._ref.poll_events()  # type: ignore[no-any-return]
        return _events(lib.ie_esp_out_events, self._sa, self.cfg.spi)

    def encap(self, payload: bytes, next_header: int, *, iv: bytes | None = None) -> tuple[Verdict, bytes]:
        return self.encap_batch([payload], next_header, ivs=None if iv is None else [iv])[0]

    def encap_batch(
        self, payloads: Sequence[bytes], next_header: int, *, ivs: Sequence[bytes | None] | None = None
    ) -> list[tuple[Verdict, bytes]]:
        if self._ref is not None:
            return self._ref.encap_batch(payloads, next_header, ivs=ivs)  # type: ignore[no-any-return]
        if not 0 <= next_header <= 255:
            raise ValueError(f"next_header: must be 0..255, got {next_header}")
        if ivs is not None:
            if len(ivs) != len(payloads):
                raise ValueError(f"ivs: need one IV per payload ({len(payloads)}), got {len(ivs)}")
            for iv in ivs:
                if iv is not None and len(iv) != self._iv_len:
                    raise ValueError(f"iv: {self.cfg.encr} needs a {self._iv_len}-byte IV, got {len(iv)}")
        b = _Batch(payloads, lib.IE_ESP_HEADROOM, lib.IE_ESP_TAILROOM, next_header)
        if ivs is not None:
            b.set_ivs(ivs, self._iv_len)
        lib.ie_esp_encap(self._sa, b.pkts, b.n, b.verdicts)
        return _tx_results(b)


def _decap_results(b: _Batch) -> list[DecapResult]:
    res = []
    outs = b.outputs()
    for i, v in enumerate(b.verdict_codes()):
        p = b.pkts[i]
        if v == _OK:
            res.append(DecapResult(Verdict.OK, outs[i], p.next_header, p.seq, p.spi))
        elif v == _TFC_DUMMY:
            res.append(DecapResult(Verdict.TFC_DUMMY, next_header=p.next_header, seq=p.seq, spi=p.spi))
        elif v == _TOO_SHORT:
            res.append(DecapResult(Verdict.TOO_SHORT))
        else:
            res.append(DecapResult(_VERDICT[v], spi=p.spi))
    return res


class _CTable:
    """Owner of one C ESP table."""

    def __init__(self) -> None:
        t = lib.ie_esp_table_new()
        if t == ffi.NULL:
            raise MemoryError("ie_esp_table_new")
        self.t = ffi.gc(t, lib.ie_esp_table_free)

    def add(self, cfg: EspSaConfig, replay_top: int) -> None:
        limit = _U64 if cfg.esn else (1 << 32) - 1
        if not 0 <= replay_top <= limit:
            raise ConfigError(f"replay_top: replay window top must be 0..{limit}, got {replay_top}")
        c, _keep = _esp_cfg(cfg, replay_top)
        _check(lib.ie_esp_table_add(self.t, c), f"spi {cfg.spi:#010x}")

    def counters(self, spi: int) -> SaCounters:
        c = ffi.new("ie_counters *")
        _check(lib.ie_esp_table_counters(self.t, spi, c), f"spi {spi:#010x}")
        return _counters(c)

    def global_counters(self) -> SaCounters:
        c = ffi.new("ie_counters *")
        lib.ie_esp_table_global_counters(self.t, c)
        return _counters(c)

    def events(self, spi: int) -> list[ExpireEvent]:
        return _events(lib.ie_esp_table_events, self.t, spi, spi)

    def decap(self, packets: Sequence[bytes]) -> list[DecapResult]:
        b = _Batch(packets, 0, 0)
        lib.ie_esp_decap(self.t, b.pkts, b.n, b.verdicts)
        return _decap_results(b)


class EspInbound:
    """Inbound ESP SA on the C path.  ``replay_top`` starts the window as if that full sequence
    number had been received (as in the reference backend)."""

    def __init__(self, cfg: EspSaConfig, *, replay_top: int = 0) -> None:
        self.cfg = cfg
        self._ref: Any = None
        if not native_esp_supported(cfg):
            self._ref = reference.EspInbound(cfg, replay_top=replay_top)
            return
        _keys, _salt, iv_len, block, icv = ESP_ENCR[cfg.encr]
        if cfg.integ is not None:
            icv = {"hmac-sha1-96": 12, "hmac-sha256-128": 16, "hmac-sha384-192": 24,
                   "hmac-sha512-256": 32}[cfg.integ]
        self._min_len = 8 + iv_len + icv + block
        self._table = _CTable()
        self._table.add(cfg, replay_top)
        self._too_short = 0  # a lone SA checks the length before the SPI, like the reference

    @property
    def counters(self) -> SaCounters:
        if self._ref is not None:
            return self._ref.counters  # type: ignore[no-any-return]
        c = _add_counters(self._table.counters(self.cfg.spi), self._table.global_counters())
        c.too_short += self._too_short
        return c

    def poll_events(self) -> list[ExpireEvent]:
        if self._ref is not None:
            return self._ref.poll_events()  # type: ignore[no-any-return]
        return self._table.events(self.cfg.spi)

    def decap(self, packet: bytes) -> DecapResult:
        return self.decap_batch([packet])[0]

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        if self._ref is not None:
            return self._ref.decap_batch(packets)  # type: ignore[no-any-return]
        packets = list(packets)
        short = [len(p) < self._min_len for p in packets]
        if not any(short):
            return self._table.decap(packets)
        self._too_short += sum(short)
        done = iter(self._table.decap([p for p, s in zip(packets, short, strict=True) if not s]))
        return [DecapResult(Verdict.TOO_SHORT) if s else next(done) for s in short]


class _TableSa:
    """What ``EspInboundTable.add`` returns for a C-path SA: its config, counters and events."""

    def __init__(self, table: EspInboundTable, cfg: EspSaConfig) -> None:
        self._table = table
        self.cfg = cfg

    @property
    def counters(self) -> SaCounters:
        return self._table.counters_for(self.cfg.spi)

    def poll_events(self) -> list[ExpireEvent]:
        return self._table._c.events(self.cfg.spi)

    def decap(self, packet: bytes) -> DecapResult:
        """Through the table (a foreign SPI is counted table-wide, not on this SA)."""
        return self._table.decap(packet)

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        return self._table.decap_batch(packets)


class EspInboundTable:
    """The inbound SAD by SPI (C hash table).  Table-wide ``counters`` hold drops tied to no SA."""

    def __init__(self) -> None:
        self._c = _CTable()
        self._native: dict[int, _TableSa] = {}
        self._fallback: dict[int, Any] = {}  # SPI -> reference EspInbound
        self._events: list[ExpireEvent] = []

    @property
    def counters(self) -> SaCounters:
        return self._c.global_counters()

    def add(self, cfg: EspSaConfig, *, replay_top: int = 0) -> Any:
        if cfg.spi in self:
            raise ConfigError(f"spi: an inbound SA with SPI {cfg.spi:#010x} already exists")
        if not native_esp_supported(cfg):
            sa = reference.EspInbound(cfg, replay_top=replay_top)
            self._fallback[cfg.spi] = sa
            return sa
        self._c.add(cfg, replay_top)
        view = _TableSa(self, cfg)
        self._native[cfg.spi] = view
        return view

    def remove(self, spi: int) -> None:
        if spi in self._fallback:
            self._events.extend(self._fallback.pop(spi).poll_events())
            return
        if spi not in self._native:
            raise ConfigError(f"spi: no inbound SA with SPI {spi:#010x}")
        self._events.extend(self._c.events(spi))  # don't lose expire events of a removed SA
        lib.ie_esp_table_remove(self._c.t, spi)
        del self._native[spi]

    def __contains__(self, spi: object) -> bool:
        return spi in self._native or spi in self._fallback

    def __len__(self) -> int:
        return len(self._native) + len(self._fallback)

    def counters_for(self, spi: int) -> SaCounters:
        if spi in self._fallback:
            return self._fallback[spi].counters  # type: ignore[no-any-return]
        if spi not in self._native:
            raise ConfigError(f"spi: no inbound SA with SPI {spi:#010x}")
        return self._c.counters(spi)

    def poll_events(self) -> list[ExpireEvent]:
        out, self._events = self._events, []
        for spi in self._native:
            out.extend(self._c.events(spi))
        for sa in self._fallback.values():
            out.extend(sa.poll_events())
        return out

    def decap(self, packet: bytes) -> DecapResult:
        return self.decap_batch([packet])[0]

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        packets = list(packets)
        if not self._fallback:
            return self._c.decap(packets)
        # Route packets of reference-served SAs to Python, the rest to C in one batch.
        fb = [
            self._fallback.get(int.from_bytes(p[:4], "big")) if len(p) >= 8 else None for p in packets
        ]
        native = iter(self._c.decap([p for p, sa in zip(packets, fb, strict=True) if sa is None]))
        return [next(native) if sa is None else sa.decap(p) for p, sa in zip(packets, fb, strict=True)]


# ---------------------------------------------------------------------------- MACsec


def _secy_cfg(secy: SecYConfig) -> Any:
    c = ffi.new("ie_secy_cfg *")
    c.include_sci = int(secy.include_sci)
    c.end_station = int(secy.end_station)
    c.confidentiality = int(secy.confidentiality)
    c.replay_protect = int(secy.replay_protect)
    c.replay_window = secy.replay_window
    c.validate = _VALIDATE[secy.validate]
    # anything above 2^32 can never be reached (also not as XPN's threshold << 32)
    c.pn_exhaustion_threshold = min(max(secy.pn_exhaustion_threshold, 0), 1 << 33)
    return c


def _sa_cfg(sa: MacsecSaConfig) -> tuple[Any, list[Any]]:
    c = ffi.new("ie_macsec_sa_cfg *")
    sak = ffi.new("uint8_t[]", bytes(sa.sak))
    salt = ffi.new("uint8_t[]", bytes(sa.salt) if sa.salt is not None else bytes(12))
    c.cipher = _MACSEC_CIPHER[sa.cipher]
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
        c, _keep = _sa_cfg(sa)
        out = ffi.new("ie_macsec_tx **")
        _check(lib.ie_macsec_tx_new(_secy_cfg(secy), c, out), "MACsec TX SA")
        self._tx = ffi.gc(out[0], lib.ie_macsec_tx_free)

    @property
    def next_pn(self) -> int:
        return int(lib.ie_macsec_tx_next_pn(self._tx)) + int(lib.ie_macsec_tx_exhausted(self._tx))

    @property
    def counters(self) -> SaCounters:
        c = ffi.new("ie_counters *")
        lib.ie_macsec_tx_counters(self._tx, c)
        return _counters(c)

    def poll_events(self) -> list[ExpireEvent]:
        return _events(lib.ie_macsec_tx_events, self._tx, self.sa.sci)

    def protect(self, frame: bytes) -> tuple[Verdict, bytes]:
        return self.protect_batch([frame])[0]

    def protect_batch(self, frames: Iterable[bytes]) -> list[tuple[Verdict, bytes]]:
        b = _Batch(list(frames), lib.IE_MACSEC_HEADROOM, lib.IE_MACSEC_TAILROOM)
        lib.ie_macsec_protect(self._tx, b.pkts, b.n, b.verdicts)
        return _tx_results(b)


class MacsecRx:
    """The receive side of one SecY: SAs keyed by (SCI, AN) in a C hash table."""

    def __init__(self, secy: SecYConfig) -> None:
        self.secy = secy
        out = ffi.new("ie_macsec_rx **")
        _check(lib.ie_macsec_rx_new(_secy_cfg(secy), out), "MACsec SecY")
        self._rx = ffi.gc(out[0], lib.ie_macsec_rx_free)

    def add_sa(self, sa: MacsecSaConfig) -> None:
        """Install (or replace, as when an AN is reused for a new SAK) a receive SA."""
        c, _keep = _sa_cfg(sa)
        lib.ie_macsec_rx_remove_sa(self._rx, c.sci, sa.an)  # replacing is allowed
        _check(lib.ie_macsec_rx_add_sa(self._rx, c), "MACsec RX SA")

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
        return _counters(c)

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
        return _counters(c)

    def validate(self, frame: bytes) -> ValidateResult:
        return self.validate_batch([frame])[0]

    def validate_batch(self, frames: Iterable[bytes]) -> list[ValidateResult]:
        b = _Batch(list(frames), 0, 0)
        lib.ie_macsec_validate(self._rx, b.pkts, b.n, b.verdicts)
        res = []
        outs = b.outputs()
        for i, v in enumerate(b.verdict_codes()):
            p = b.pkts[i]
            res.append(ValidateResult(
                _VERDICT[v],
                outs[i] if p.flags & _DELIVER else b"",
                p.sci.to_bytes(8, "big") if p.flags & _HAS_SCI else b"",
                p.an,
                p.seq,
            ))
        return res


# ---------------------------------------------------------------------------- gateway loop


class EspUdpLoop:
    """The C gateway loop: tun <-> ESP-in-UDP (RFC 3948) with one peer, batched, no Python per
    packet.  ``run()`` blocks (without the GIL) until ``stop()``; ``start()`` runs it on a thread.

    IKE datagrams (non-ESP marker) arriving on the UDP socket are sent to ``ike_fd`` (an
    AF_UNIX SOCK_DGRAM socket) one message each; :func:`parse_ike_record` decodes them.
    ``raw_esp=True``: ``udp_fd`` is a raw IP protocol 50 socket instead (peer port ignored).
    The SA objects must stay alive and must not be used from Python while the loop runs, except
    inside ``with loop.paused():`` (the loop waits between batches): there the inbound table may
    be edited and ``set_outbound`` switches the outbound SA, so a rekey needs no stop/start.
    An ICMP error on the socket (peer restarting) is counted in ``stats["sock_errors"]``.
    ESP-in-UDP uses UDP GSO on send (``gso``) and UDP GRO on receive (``gro``; switched off
    again when the loop is freed); ``sock_buf`` raises the socket buffers (forced as root).
    ``tun_vnet=True``: the tun was opened with ``ipsecemu.net.tun.open_tun(vnet_hdr=True)``; the loop turns on TSO so the
    kernel hands over TCP super-packets, which it cuts into segments itself (off again on free,
    but every packet read or written by others then carries a 10-byte zero header: net.tun.VNET_HDR).
    """

    def __init__(self, *, tun_fd: int, udp_fd: int, peer: tuple[str, int], outbound: EspOutbound,
                 inbound: EspInboundTable, ike_fd: int = -1, batch: int = 32, mtu: int = 1500,
                 poll_ms: int = 50, raw_esp: bool = False, gso: bool = True, gro: bool = True,
                 sock_buf: int = 4 << 20, tun_vnet: bool = False) -> None:
        import ipaddress
        import threading

        if outbound._sa is None:
            raise ConfigError(f"encr: the C loop needs a C-path SA, not {outbound.cfg.encr}")
        if not 1 <= batch <= lib.IE_LOOP_MAX_BATCH:
            raise ConfigError(f"batch: must be 1..{lib.IE_LOOP_MAX_BATCH}, got {batch}")
        if not 68 <= mtu <= 65535:
            raise ConfigError(f"mtu: must be 68..65535, got {mtu}")
        if tun_fd < 0 or udp_fd < 0:
            raise ConfigError("tun_fd/udp_fd: need open file descriptors")
        if not 0 <= sock_buf <= 1 << 30:
            raise ConfigError(f"sock_buf: must be 0..{1 << 30} bytes, got {sock_buf}")
        try:
            addr = ipaddress.ip_address(peer[0])
        except ValueError as exc:
            raise ConfigError(f"peer: {exc}") from None
        c = ffi.new("ie_loop_cfg *")
        c.tun_fd, c.udp_fd, c.ike_fd = tun_fd, udp_fd, ike_fd
        c.peer_family = addr.version
        c.peer_addr = addr.packed + bytes(16 - len(addr.packed))
        c.peer_port = peer[1]
        c.batch, c.mtu, c.poll_ms = batch, mtu, poll_ms
        c.raw_esp = int(raw_esp)
        c.offload = (lib.IE_LOOP_UDP_GSO if gso else 0) | (lib.IE_LOOP_UDP_GRO if gro else 0)
        c.sock_buf = sock_buf
        c.tun_vnet = int(tun_vnet)
        out = ffi.new("ie_loop **")
        _check(lib.ie_loop_new(c, outbound._sa, inbound._c.t, out),
               "gateway loop (tun_vnet must match how the tun was opened)")
        self._loop = ffi.gc(out[0], lib.ie_loop_free)
        self._keep = (outbound, inbound)  # borrowed by C: keep them alive
        self.outbound, self.inbound = outbound, inbound
        self._held = False
        self._thread: threading.Thread | None = None
        self._threading = threading
        self.result: int | None = None

    def run(self) -> int:
        self.result = int(lib.ie_loop_run(self._loop))
        return self.result

    def start(self) -> None:
        self._thread = self._threading.Thread(target=self.run, name="ipsecemu-esp-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        lib.ie_loop_stop(self._loop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def step(self, timeout_ms: int = 0) -> int:
        return int(lib.ie_loop_step(self._loop, timeout_ms))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the loop between batches while the block changes SAs (one control thread;
        nesting is fine).  Packets arriving meanwhile wait in the kernel queues."""
        if self._held:
            yield
            return
        lib.ie_loop_pause(self._loop)  # cffi drops the GIL while this waits for the batch to end
        self._held = True
        try:
            yield
        finally:
            self._held = False
            lib.ie_loop_resume(self._loop)

    def set_outbound(self, outbound: EspOutbound) -> EspOutbound:
        """Send with ``outbound`` from the next batch on; returns the previous SA (no longer
        used by the loop)."""
        if outbound._sa is None:
            raise ConfigError(f"encr: the C loop needs a C-path SA, not {outbound.cfg.encr}")
        with self.paused():
            lib.ie_loop_set_out(self._loop, outbound._sa)
            old, self.outbound = self.outbound, outbound
            self._keep = (outbound, self.inbound)
        return old

    @property
    def stats(self) -> dict[str, int]:
        s = ffi.new("ie_loop_stats *")
        lib.ie_loop_get_stats(self._loop, s)
        return {name: getattr(s, name) for name, _ in ffi.typeof("ie_loop_stats").fields}


def parse_ike_record(record: bytes) -> tuple[tuple[str, int], bytes]:
    """Decode one message the loop wrote to ``ike_fd``: ((address, port), IKE message)."""
    import ipaddress

    if len(record) < 19 or record[0] not in (4, 6):
        raise ValueError("not an ipsecemu IKE record")
    raw = record[1:5] if record[0] == 4 else record[1:17]
    return (str(ipaddress.ip_address(raw)), int.from_bytes(record[17:19], "big")), record[19:]


# ---------------------------------------------------------------------------- benchmarks


def bench_esp(cfg: EspSaConfig, size: int, batch: int, iterations: int) -> tuple[float, float]:
    """Seconds spent in C for ``iterations`` x encap and decap of ``batch`` packets of ``size``
    payload bytes (no Python per packet).  Raises RuntimeError if any packet failed."""
    if not native_esp_supported(cfg):
        raise ConfigError(f"encr/integ: {cfg.encr}/{cfg.integ} is not on the C path")
    c, _keep = _esp_cfg(cfg, 1)
    ns = ffi.new("uint64_t[2]")
    bad = lib.ie_bench_esp(c, size, batch, iterations, ns)
    if bad:
        raise RuntimeError(f"ESP benchmark: {'setup failed' if bad < 0 else f'{bad} packets failed'}")
    return ns[0] / 1e9, ns[1] / 1e9


def bench_macsec(secy: SecYConfig, sa: MacsecSaConfig, size: int, batch: int,
                 iterations: int) -> tuple[float, float]:
    """Seconds spent in C protecting and validating ``iterations`` x ``batch`` frames of
    ``size`` bytes (Ethernet header included)."""
    c, _keep = _sa_cfg(sa)
    ns = ffi.new("uint64_t[2]")
    bad = lib.ie_bench_macsec(_secy_cfg(secy), c, size, batch, iterations, ns)
    if bad:
        raise RuntimeError(f"MACsec benchmark: {'setup failed' if bad < 0 else f'{bad} frames failed'}")
    return ns[0] / 1e9, ns[1] / 1e9


# ---------------------------------------------------------------------------- MACsec link loop


class MacsecLinkLoop:
    """The C MACsec link loop: tap <-> SecY <-> AF_PACKET on the phy, batched, no Python per frame.

    ``run()`` blocks (without the GIL) until ``stop()``; ``start()`` runs it on a thread.  While
    it runs, :meth:`set_tx`, :meth:`add_rx_sa` and :meth:`remove_rx_sa` apply MKA's SA changes
    between two batches (the C side takes a mutex), so SAK rotation loses no frames.
    """

    def __init__(self, *, tap_fd: int, phy_fd: int, secy: SecYConfig, batch: int = 64,
                 max_frame: int = 1514, poll_ms: int = 50, vlan: int | None = None,
                 qinq: tuple[int, int] | None = None, tap_vnet: bool = False) -> None:
        """``tap_vnet``: the tap was opened with IFF_VNET_HDR; the loop then turns on its TSO
        offloads, cuts TCP super-packets into ``max_frame`` frames and coalesces received TCP
        segments of one flow into super-packets (userspace GRO)."""
        import threading

        if not 1 <= batch <= lib.IE_LOOP_MAX_BATCH:
            raise ConfigError(f"batch: must be 1..{lib.IE_LOOP_MAX_BATCH}, got {batch}")
        if not 60 <= max_frame <= 65535:
            raise ConfigError(f"max_frame: must be 60..65535, got {max_frame}")
        if tap_fd < 0 or phy_fd < 0:
            raise ConfigError("tap_fd/phy_fd: need open file descriptors")
        if vlan is not None and qinq is not None:
            raise ConfigError("vlan/qinq: give one of them")
        stag, ctag = qinq if qinq is not None else (0, vlan or 0)
        if not (0 <= stag <= 4094 and 0 <= ctag <= 4094) or (qinq is not None and not (stag and ctag)) \
                or vlan == 0:
            raise ConfigError(f"vlan/qinq: VIDs must be 1..4094, got {vlan if qinq is None else qinq}")
        self.secy = secy
        self._rx = MacsecRx(secy)  # its SA table is only touched through the loop from now on
        c = ffi.new("ie_mloop_cfg *")
        c.tap_fd, c.phy_fd, c.batch, c.max_frame, c.poll_ms = tap_fd, phy_fd, batch, max_frame, poll_ms
        c.validate = _VALIDATE[secy.validate]
        c.stag, c.ctag = stag, ctag
        c.tap_vnet = int(tap_vnet)
        out = ffi.new("ie_mloop **")
        _check(lib.ie_mloop_new(c, self._rx._rx, out), "MACsec link loop (is tap_vnet right for this fd?)"
               if tap_vnet else "MACsec link loop")
        self._loop = ffi.gc(out[0], lib.ie_mloop_free)
        self.tx: MacsecTx | None = None
        self._retired: list[MacsecTx] = []
        self._thread: threading.Thread | None = None
        self._threading = threading
        self.result: int | None = None

    def set_tx(self, sa: MacsecSaConfig | None) -> MacsecTx | None:
        """Start transmitting with ``sa`` (None: stop); returns the new MacsecTx."""
        tx = MacsecTx(self.secy, sa) if sa is not None else None
        lib.ie_mloop_set_tx(self._loop, tx._tx if tx is not None else ffi.NULL)
        if self.tx is not None:
            self._retired = [self.tx]  # unused by C now; keep its counters readable a while
        self.tx = tx
        return tx

    def add_rx_sa(self, sa: MacsecSaConfig) -> None:
        c, _keep = _sa_cfg(sa)
        _check(lib.ie_mloop_rx_add_sa(self._loop, c), "MACsec RX SA")

    def remove_rx_sa(self, sci: bytes, an: int) -> None:
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_mloop_rx_remove_sa(self._loop, int.from_bytes(sci, "big"), an) != lib.IE_S_OK:
            raise self._rx._missing(sci, an)

    def rx_counters_for(self, sci: bytes, an: int) -> SaCounters:
        c = ffi.new("ie_counters *")
        if len(sci) != 8 or not 0 <= an <= 3 or \
                lib.ie_mloop_rx_sa_counters(self._loop, int.from_bytes(sci, "big"), an, c) != lib.IE_S_OK:
            raise self._rx._missing(sci, an)
        return _counters(c)

    @property
    def rx_counters(self) -> SaCounters:
        """SecY-wide receive drops not tied to an SA (unknown SCI/AN, bad SecTAG...)."""
        return self._rx.counters

    def run(self) -> int:
        self.result = int(lib.ie_mloop_run(self._loop))
        return self.result

    def start(self) -> None:
        self._thread = self._threading.Thread(target=self.run, name="ipsecemu-macsec-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        lib.ie_mloop_stop(self._loop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def step(self, timeout_ms: int = 0) -> int:
        return int(lib.ie_mloop_step(self._loop, timeout_ms))

    @property
    def stats(self) -> dict[str, int]:
        s = ffi.new("ie_mloop_stats *")
        lib.ie_mloop_get_stats(self._loop, s)
        return {name: getattr(s, name) for name, _ in ffi.typeof("ie_mloop_stats").fields}
