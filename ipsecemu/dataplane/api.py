"""The data-plane contract shared by the reference (pure Python) and native (C) backends.

The plain data (SA configurations, verdicts, counters, expire events) lives in
:mod:`ipsecemu.base.satypes`, below both the backends and the protocol cores.  This module holds the
contract itself: the per-packet semantics below and the typing ``Protocol`` of each backend class
(described in ``ipsecemu/dataplane/__init__.py``), so tests and the lab can swap one backend for the
other.

Framing rules (both backends):

* ESP transforms work on the ESP packet only: ``SPI | seq | IV | ciphertext | [ICV]``.
  Outer IPv4/IPv6 headers and the RFC 3948 UDP header are added/removed by
  ``ipsecemu.esp.framing`` (or by the kernel when the lab sends on a UDP/raw socket).
* MACsec transforms work on whole Ethernet frames: ``DA | SA | [802.1Q...] type | payload``
  is protected into ``DA | SA | SecTAG | secure data | ICV`` (the SecTAG sits right after the
  source MAC; VLAN tags, if any, are inside the secure data, as 802.1AE says).

Per-packet semantics (both backends MUST match; tests compare them byte for byte)
----------------------------------------------------------------------------------
ESP encap: sequence numbers start at ``1``; padding is the minimum that aligns
``payload | pad | pad_len | next_header`` to the block size of ``ESP_ENCR`` (4 for AEAD and
NULL), pad bytes 1,2,3,...  AEAD: nonce = salt | IV, AAD = SPI | seq (or SPI | seq_hi | seq_lo
with ESN).  CBC/NULL + HMAC: ICV = HMAC(SPI | seq_lo | IV | ciphertext [| seq_hi if ESN])
truncated.  Default IV: AEAD = 8-byte big-endian full sequence number; CBC = random.
Outbound limits: the last usable seq is 2^32-1 (2^64-1 with ESN); past it -> EXHAUSTED (nothing
produced, counted).  A soft "seq" event fires when the remaining sequence numbers drop to
``seq_soft_margin``.  Lifetime (both directions): a packet is refused with EXHAUSTED when the
counters *before* it already reached ``hard_packets``/``hard_bytes``; the "hard" event fires
when the counter first reaches the hard limit, the "soft" one when it first reaches the soft
limit.  ``bytes`` counts payload (inner) bytes.  Each (kind, reason) event fires once per SA.

ESP decap, checks in this order (first failure wins, counted in the matching counter):
  1. TOO_SHORT: len < 8 + iv + icv + block (block from ESP_ENCR)
  2. UNKNOWN_SA (table lookup by SPI)
  3. BAD_ALIGNMENT: (len - 8 - iv - icv) % block != 0
  4. EXHAUSTED: inbound hard lifetime already reached
  5. REPLAY (window > 0): seq older than the window or already seen.  ESN seq_hi inference
     per RFC 4303 App. A2 with W = replay_window, or W = 2^31 when replay_window is 0.
  6. BAD_ICV (authenticate before decrypting; AEAD open)
  7. BAD_PADDING: pad_len > plaintext_len - 2, or pad bytes not 1,2,3,...
  8. TFC_DUMMY: next header 59 (window committed, counted in tfc_dummy, no payload)
  9. OK: commit the window, count packets/bytes.
  The window moves only on TFC_DUMMY and OK.

MACsec protect(frame): frame must be >= 14 bytes (else TOO_SHORT).  SecTAG = 0x88E5 | TCI/AN |
SL | PN(low 32 bits) | [SCI].  TCI: V=0, ES = end_station and not include_sci, SC =
include_sci, SCB = 0, E = C = confidentiality.  SL = len(secure data) if < 48 else 0.  Secure
data = frame[12:] (EtherType onward).  IV: SCI | PN32, or XPN (SSCI ^ salt[0:4]) | (PN64 ^
salt[4:12]).  Confidentiality: AAD = DA | SA | SecTAG, encrypt secure data.  Integrity only:
GCM with empty plaintext, AAD = DA | SA | SecTAG | secure data.  ICV is 16 bytes.  PNs never
repeat: past 2^32-1 (2^64-1 XPN) -> EXHAUSTED.  Soft "pn" event when next_pn reaches
``pn_exhaustion_threshold`` (XPN: ``pn_exhaustion_threshold << 32``), hard when the last PN
was used.

MACsec validate(frame), first failure wins:
  1. TOO_SHORT: < 14 bytes.  EtherType != 0x88E5: NOT_PROTECTED in "strict" (counted,
     dropped); in "check"/"disabled" the frame is returned unchanged with OK.
  2. TOO_SHORT: shorter than SecTAG (+SCI) + 16-byte ICV.
  3. BAD_HEADER: V=1; ES=1 with SC=1; SCB=1 with SC=1; E=1 with C=0; SL >= 48; SL != 0 and
     SL != len(secure data); SL == 0 and len(secure data) < 48.
  4. SCI: explicit, or source MAC | 0x0001 when SC=0.  UNKNOWN_SA if no SA for (SCI, AN).
  5. PN: non-XPN wire PN 0 -> BAD_HEADER.  XPN: recovered per 802.1AEbw from the lowest
     acceptable PN (if wire PN >= low 32 bits of it, high half = its high half, else + 1);
     recovered PN 0 -> BAD_HEADER.
  6. REPLAY (replay_protect): PN < lowest acceptable PN = max(1, next_pn - replay_window).
     As in 802.1AE, duplicates above the lowest acceptable PN are not detected when
     replay_window > 0; with the default window 0 every PN must be new and increasing.
  7. BAD_ICV.  In "check" mode an integrity-only frame failing here is still returned in
     ``frame`` (verdict BAD_ICV); in "disabled" mode integrity-only frames are stripped
     without checking (OK), encrypted frames are validated as in "check".
  8. OK: next_pn = max(next_pn, pn + 1); count packets and secure-data bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from ipsecemu.base.satypes import (
    DecapResult,
    EspSaConfig,
    ExpireEvent,
    MacsecSaConfig,
    SaCounters,
    ValidateResult,
    Verdict,
)


class EspOutbound(Protocol):
    """One outbound ESP SA: ``EspOutbound(cfg: EspSaConfig)``."""

    counters: SaCounters

    @property
    def next_seq(self) -> int: ...

    def encap(self, payload: bytes, next_header: int, *, iv: bytes | None = None) -> tuple[Verdict, bytes]: ...

    def encap_batch(
        self, payloads: Sequence[bytes], next_header: int, *, ivs: Sequence[bytes | None] | None = None
    ) -> list[tuple[Verdict, bytes]]: ...

    def poll_events(self) -> list[ExpireEvent]: ...


class EspInbound(Protocol):
    """One inbound ESP SA: ``EspInbound(cfg: EspSaConfig)``."""

    counters: SaCounters

    def decap(self, packet: bytes) -> DecapResult: ...

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]: ...

    def poll_events(self) -> list[ExpireEvent]: ...


class EspInboundTable(Protocol):
    """The inbound SAD by SPI: ``EspInboundTable()``."""

    def add(self, cfg: EspSaConfig, *, replay_top: int = 0) -> EspInbound: ...

    def remove(self, spi: int) -> None: ...

    def decap(self, packet: bytes) -> DecapResult: ...

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]: ...

    def counters_for(self, spi: int) -> SaCounters: ...

    def poll_events(self) -> list[ExpireEvent]: ...


class MacsecTx(Protocol):
    """One transmit SA of a SecY: ``MacsecTx(secy: SecYConfig, sa: MacsecSaConfig)``."""

    counters: SaCounters

    @property
    def next_pn(self) -> int: ...

    def protect(self, frame: bytes) -> tuple[Verdict, bytes]: ...

    def protect_batch(self, frames: Iterable[bytes]) -> list[tuple[Verdict, bytes]]: ...

    def poll_events(self) -> list[ExpireEvent]: ...


class MacsecRx(Protocol):
    """The receive side of a SecY: ``MacsecRx(secy: SecYConfig)``."""

    counters: SaCounters

    def add_sa(self, sa: MacsecSaConfig) -> None: ...

    def remove_sa(self, sci: bytes, an: int) -> None: ...

    def counters_for(self, sci: bytes, an: int) -> SaCounters: ...

    def validate(self, frame: bytes) -> ValidateResult: ...

    def validate_batch(self, frames: Iterable[bytes]) -> list[ValidateResult]: ...
