"""ESP SAs on the C path: ``EspOutbound``, ``EspInbound``, ``EspInboundTable`` (the inbound SAD
by SPI) and the C ESP timing loop.  Algorithms the C code does not implement
(ChaCha20-Poly1305, NULL, HMAC-MD5) are served transparently by the reference classes.
``encap_transport_batch`` / ``decap_transport_batch`` take whole IP packets (transport mode,
RFC 4303 §3.1.1; semantics of :mod:`ipsecemu.esp.transport`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ipsecemu.base.algorithms import C_ESP_ENCR, C_ESP_INTEG, ESP_ENCR
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import DecapResult, EspSaConfig, ExpireEvent, SaCounters, Verdict
from ipsecemu.dataplane.native.cmodule import (
    OK,
    TFC_DUMMY,
    TOO_SHORT,
    U64_MAX,
    VERDICT,
    Batch,
    add_counters,
    check_status,
    ffi,
    lib,
    pop_events,
    to_counters,
    tx_results,
    u64_limit,
)
from ipsecemu.esp import reference  # the fallback for algorithms the C path lacks
from ipsecemu.esp import transport as ref_transport


def native_esp_supported(cfg: EspSaConfig) -> bool:
    """True when the C path implements this SA's algorithms (else the reference serves it)."""
    return cfg.encr in C_ESP_ENCR and cfg.integ in C_ESP_INTEG


def _esp_cfg(cfg: EspSaConfig, initial: int) -> tuple[Any, list[Any]]:
    """The C config for one SA; the second item keeps the key buffers alive for the call."""
    c = ffi.new("ie_esp_cfg *")
    enc_key = ffi.new("uint8_t[]", bytes(cfg.enc_key))
    integ_key = ffi.new("uint8_t[]", bytes(cfg.integ_key) or b"\0")
    c.spi = cfg.spi
    c.encr = C_ESP_ENCR[cfg.encr]
    c.integ = C_ESP_INTEG[cfg.integ]
    c.enc_key = enc_key
    c.enc_key_len = len(cfg.enc_key)
    c.integ_key = integ_key
    c.integ_key_len = len(cfg.integ_key)
    c.esn = int(cfg.esn)
    c.replay_window = cfg.replay_window
    lt = cfg.lifetime
    c.soft_bytes = u64_limit(lt.soft_bytes, "lifetime.soft_bytes")
    c.hard_bytes = u64_limit(lt.hard_bytes, "lifetime.hard_bytes")
    c.soft_packets = u64_limit(lt.soft_packets, "lifetime.soft_packets")
    c.hard_packets = u64_limit(lt.hard_packets, "lifetime.hard_packets")
    c.seq_soft_margin = u64_limit(cfg.seq_soft_margin, "seq_soft_margin")
    c.initial_seq = initial
    return c, [enc_key, integ_key]


class EspOutbound:
    """Outbound ESP SA on the C path (reference fallback for algorithms C lacks)."""

    def __init__(self, cfg: EspSaConfig, *, initial_seq: int = 1) -> None:
        self.cfg = cfg
        self.max_seq = U64_MAX if cfg.esn else (1 << 32) - 1
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
        check_status(lib.ie_esp_out_new(c, out), "ESP outbound SA")
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
        return to_counters(c)

    def poll_events(self) -> list[ExpireEvent]:
        if self._ref is not None:
            return self._ref.poll_events()  # type: ignore[no-any-return]
        return pop_events(lib.ie_esp_out_events, self._sa, self.cfg.spi)

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
        b = Batch(payloads, lib.IE_ESP_HEADROOM, lib.IE_ESP_TAILROOM, next_header)
        if ivs is not None:
            b.set_ivs(ivs, self._iv_len)
        lib.ie_esp_encap(self._sa, b.pkts, b.n, b.verdicts)
        return tx_results(b)

    def encap_transport_batch(
        self, packets: Sequence[bytes], *, ivs: Sequence[bytes | None] | None = None
    ) -> list[tuple[Verdict, bytes]]:
        """Transport mode: each item is a whole IP packet; returns it with ESP inserted."""
        if ivs is not None and len(ivs) != len(packets):
            raise ValueError(f"ivs: need one IV per packet ({len(packets)}), got {len(ivs)}")
        if self._ref is not None:
            return [ref_transport.encap_transport(self._ref, p, iv=None if ivs is None else ivs[i])
                    for i, p in enumerate(packets)]
        b = Batch(packets, lib.IE_ESP_HEADROOM, lib.IE_ESP_TAILROOM)
        if ivs is not None:
            for iv in ivs:
                if iv is not None and len(iv) != self._iv_len:
                    raise ValueError(f"iv: {self.cfg.encr} needs a {self._iv_len}-byte IV, got {len(iv)}")
            b.set_ivs(ivs, self._iv_len)
        lib.ie_esp_encap_transport(self._sa, b.pkts, b.n, b.verdicts)
        return tx_results(b)


def _decap_results(b: Batch) -> list[DecapResult]:
    res = []
    outs = b.outputs()
    for i, v in enumerate(b.verdict_codes()):
        p = b.pkts[i]
        if v == OK:
            res.append(DecapResult(Verdict.OK, outs[i], p.next_header, p.seq, p.spi))
        elif v == TFC_DUMMY:
            res.append(DecapResult(Verdict.TFC_DUMMY, next_header=p.next_header, seq=p.seq, spi=p.spi))
        elif v == TOO_SHORT:
            res.append(DecapResult(Verdict.TOO_SHORT))
        else:
            res.append(DecapResult(VERDICT[v], spi=p.spi))
    return res


class _CTable:
    """Owner of one C ESP table."""

    def __init__(self) -> None:
        t = lib.ie_esp_table_new()
        if t == ffi.NULL:
            raise MemoryError("ie_esp_table_new")
        self.t = ffi.gc(t, lib.ie_esp_table_free)

    def add(self, cfg: EspSaConfig, replay_top: int) -> None:
        limit = U64_MAX if cfg.esn else (1 << 32) - 1
        if not 0 <= replay_top <= limit:
            raise ConfigError(f"replay_top: replay window top must be 0..{limit}, got {replay_top}")
        c, _keep = _esp_cfg(cfg, replay_top)
        check_status(lib.ie_esp_table_add(self.t, c), f"spi {cfg.spi:#010x}")

    def counters(self, spi: int) -> SaCounters:
        c = ffi.new("ie_counters *")
        check_status(lib.ie_esp_table_counters(self.t, spi, c), f"spi {spi:#010x}")
        return to_counters(c)

    def global_counters(self) -> SaCounters:
        c = ffi.new("ie_counters *")
        lib.ie_esp_table_global_counters(self.t, c)
        return to_counters(c)

    def events(self, spi: int) -> list[ExpireEvent]:
        return pop_events(lib.ie_esp_table_events, self.t, spi, spi)

    def decap(self, packets: Sequence[bytes]) -> list[DecapResult]:
        b = Batch(packets, 0, 0)
        lib.ie_esp_decap(self.t, b.pkts, b.n, b.verdicts)
        return _decap_results(b)

    def decap_transport(self, packets: Sequence[bytes]) -> list[DecapResult]:
        b = Batch(packets, 0, 0)
        lib.ie_esp_decap_transport(self.t, b.pkts, b.n, b.verdicts)
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
        c = add_counters(self._table.counters(self.cfg.spi), self._table.global_counters())
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

    def decap_transport_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        """Transport mode: each item is IP | ESP or IP | UDP | ESP; on OK the payload is the
        original packet."""
        packets = list(packets)
        if not self._fallback:
            return self._c.decap_transport(packets)
        return [ref_transport.decap_transport(self, p) for p in packets]



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
