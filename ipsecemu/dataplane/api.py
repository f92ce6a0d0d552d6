"""The data-plane contract shared by the reference (pure Python) and native (C) backends.

Everything here is plain data: SA configurations, per-packet verdicts, counters and expire
events.  Both backends implement the classes described in ``ipsecemu/dataplane/__init__.py``
with exactly these types, so tests and the lab can swap one for the other.

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

import enum
from dataclasses import dataclass, field


class Verdict(enum.IntEnum):
    """Per-packet outcome.  The C header defines the same numbers (checked by a test)."""

    OK = 0
    BAD_ICV = 1  # authentication failed (ICV/tag mismatch); window untouched
    REPLAY = 2  # duplicate inside the window, or older than the window
    TOO_SHORT = 3  # truncated: shorter than header + IV + ICV (+ block) needs
    BAD_PADDING = 4  # ESP: padding bytes not 1,2,3,... or pad length too long
    UNKNOWN_SA = 5  # ESP: no inbound SA for this SPI; MACsec: no SA for SCI/AN
    EXHAUSTED = 6  # TX: the SA reached its hard limit / sequence space; nothing sent
    TFC_DUMMY = 7  # ESP: next header 59 (dummy packet) — dropped silently, counted
    TOO_BIG = 8  # TX: output does not fit the buffer (headroom/tailroom)
    BAD_HEADER = 9  # MACsec: malformed SecTAG (V=1, bad TCI/SL/AN combination, PN 0)
    NOT_PROTECTED = 10  # MACsec RX: frame without SecTAG while validate mode is strict
    BAD_ALIGNMENT = 11  # ESP: ciphertext not a multiple of the cipher block size


#: ESP encryption algorithms.  AEAD ones carry the salt at the end of ``enc_key``.
#: name -> (allowed key lengths *without* salt, salt length, IV length, block size, ICV length or 0)
ESP_ENCR: dict[str, tuple[tuple[int, ...], int, int, int, int]] = {
    "aes-gcm-8": ((16, 24, 32), 4, 8, 4, 8),
    "aes-gcm-12": ((16, 24, 32), 4, 8, 4, 12),
    "aes-gcm-16": ((16, 24, 32), 4, 8, 4, 16),
    "chacha20-poly1305": ((32,), 4, 8, 4, 16),
    "aes-cbc": ((16, 24, 32), 0, 16, 16, 0),
    "3des-cbc": ((24,), 0, 8, 8, 0),
    "null": ((0,), 0, 0, 4, 0),
}

#: ESP integrity algorithms: name -> (key length, ICV length, hash name for hmac)
ESP_INTEG: dict[str, tuple[int, int, str]] = {
    "hmac-md5-96": (16, 12, "md5"),
    "hmac-sha1-96": (20, 12, "sha1"),
    "hmac-sha256-128": (32, 16, "sha256"),
    "hmac-sha384-192": (48, 24, "sha384"),
    "hmac-sha512-256": (64, 32, "sha512"),
}

AEAD_ESP_ENCR = frozenset({"aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "chacha20-poly1305"})

MAX_REPLAY_WINDOW = 4096


# The one ConfigError of the project (a ValueError too); re-exported here for the data-plane API.
from ipsecemu.base.errors import ConfigError  # noqa: E402


@dataclass(frozen=True)
class Lifetime:
    """Limits after which an SA raises expire events.  0 means unlimited."""

    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


@dataclass(frozen=True)
class EspSaConfig:
    """One ESP SA (one direction).  ``enc_key`` includes the 4-byte salt for AEAD algorithms."""

    spi: int
    encr: str
    enc_key: bytes = field(repr=False)  # keys never appear in repr()/logs
    integ: str | None = None  # None for AEAD algorithms
    integ_key: bytes = field(default=b"", repr=False)
    mode: str = "tunnel"  # "tunnel" | "transport" (framing only; the transform is the same)
    esn: bool = False
    replay_window: int = 128  # inbound only; 0 disables replay protection
    lifetime: Lifetime = field(default_factory=Lifetime)
    # Outbound: a soft "seq" expire event fires once no more than this many sequence numbers
    # remain (so IKE rekeys first); the SA refuses to send past the last one (EXHAUSTED).
    seq_soft_margin: int = 1 << 16

    def __post_init__(self) -> None:
        validate_esp_config(self)


def validate_esp_config(cfg: EspSaConfig) -> None:
    if not 0 < cfg.spi < (1 << 32) or cfg.spi < 256:
        raise ConfigError(f"spi: {cfg.spi:#x} is reserved or out of range (256..2^32-1)")
    if cfg.encr not in ESP_ENCR:
        raise ConfigError(f"encr: unknown ESP encryption {cfg.encr!r}; known: {', '.join(ESP_ENCR)}")
    keylens, salt, _iv, _blk, _icv = ESP_ENCR[cfg.encr]
    if len(cfg.enc_key) - salt not in keylens:
        want = " or ".join(str(k + salt) for k in keylens)
        raise ConfigError(f"enc_key: {cfg.encr} needs {want} bytes, got {len(cfg.enc_key)}")
    if cfg.encr in AEAD_ESP_ENCR:
        if cfg.integ is not None:
            raise ConfigError(f"integ: {cfg.encr} is an AEAD algorithm; integ must be None")
    else:
        if cfg.integ is None:
            raise ConfigError(f"integ: {cfg.encr} needs an integrity algorithm")
        if cfg.integ not in ESP_INTEG:
            raise ConfigError(f"integ: unknown ESP integrity {cfg.integ!r}; known: {', '.join(ESP_INTEG)}")
        if len(cfg.integ_key) != ESP_INTEG[cfg.integ][0]:
            raise ConfigError(
                f"integ_key: {cfg.integ} needs {ESP_INTEG[cfg.integ][0]} bytes, got {len(cfg.integ_key)}"
            )
    if cfg.mode not in ("tunnel", "transport"):
        raise ConfigError(f"mode: must be 'tunnel' or 'transport', got {cfg.mode!r}")
    if not 0 <= cfg.replay_window <= MAX_REPLAY_WINDOW:
        raise ConfigError(f"replay_window: must be 0..{MAX_REPLAY_WINDOW}, got {cfg.replay_window}")


MACSEC_CIPHERS: dict[str, tuple[int, bool]] = {
    # name -> (SAK length, XPN)
    "gcm-aes-128": (16, False),
    "gcm-aes-256": (32, False),
    "gcm-aes-xpn-128": (16, True),
    "gcm-aes-xpn-256": (32, True),
}

VALIDATE_MODES = ("strict", "check", "disabled")


@dataclass(frozen=True)
class MacsecSaConfig:
    """One MACsec SA: a SAK used by one SC (``sci``) under association number ``an``."""

    cipher: str
    sak: bytes = field(repr=False)
    sci: bytes  # 8 bytes: transmitter MAC || port
    an: int
    ssci: int | None = None  # XPN only (32 bit)
    salt: bytes | None = None  # XPN only (12 bytes)
    next_pn: int = 1  # TX: first PN to send; RX: lowest acceptable PN

    def __post_init__(self) -> None:
        if self.cipher not in MACSEC_CIPHERS:
            raise ConfigError(f"cipher: unknown MACsec cipher {self.cipher!r}; known: {', '.join(MACSEC_CIPHERS)}")
        keylen, xpn = MACSEC_CIPHERS[self.cipher]
        if len(self.sak) != keylen:
            raise ConfigError(f"sak: {self.cipher} needs {keylen} bytes, got {len(self.sak)}")
        if len(self.sci) != 8:
            raise ConfigError(f"sci: must be 8 bytes, got {len(self.sci)}")
        if not 0 <= self.an <= 3:
            raise ConfigError(f"an: must be 0..3, got {self.an}")
        if xpn and (self.ssci is None or self.salt is None or len(self.salt) != 12):
            raise ConfigError(f"ssci/salt: {self.cipher} needs a 32-bit ssci and a 12-byte salt")
        if not xpn and (self.ssci is not None or self.salt is not None):
            raise ConfigError(f"ssci/salt: only XPN ciphers take them, not {self.cipher}")
        if self.next_pn < 1 or self.next_pn >= (1 << (64 if xpn else 32)):
            raise ConfigError(f"next_pn: out of range for {self.cipher}: {self.next_pn}")

    @property
    def xpn(self) -> bool:
        return MACSEC_CIPHERS[self.cipher][1]


@dataclass(frozen=True)
class SecYConfig:
    """The settings of one MACsec Security Entity (both directions)."""

    include_sci: bool = True  # Azure "SCI state": Enabled -> explicit SCI in every SecTAG
    end_station: bool = False  # TCI.ES (only meaningful when include_sci is False)
    confidentiality: bool = True  # False -> integrity only (TCI E=0, C=0)
    replay_protect: bool = True
    replay_window: int = 0  # 802.1AE replayWindow: 0 = strict ordering
    validate: str = "strict"  # "strict" | "check" | "disabled"
    # Non-XPN TX SA raises the "new SAK needed" event once its next PN reaches this value.
    pn_exhaustion_threshold: int = 0xC0000000

    def __post_init__(self) -> None:
        if self.validate not in VALIDATE_MODES:
            raise ConfigError(f"validate: must be one of {', '.join(VALIDATE_MODES)}, got {self.validate!r}")
        if not 0 <= self.replay_window < (1 << 32):
            raise ConfigError(f"replay_window: must be 0..2^32-1, got {self.replay_window}")


@dataclass
class SaCounters:
    """Per-SA counters.  ``packets``/``bytes`` count successfully processed packets and
    their payload bytes (inner packet bytes), the rest count drops by verdict."""

    packets: int = 0
    bytes: int = 0
    bad_icv: int = 0
    replay: int = 0
    too_short: int = 0
    bad_padding: int = 0
    bad_header: int = 0
    bad_alignment: int = 0
    tfc_dummy: int = 0
    exhausted: int = 0
    not_protected: int = 0
    unknown_sa: int = 0


@dataclass(frozen=True)
class ExpireEvent:
    """Raised once per SA per kind.  ``kind`` is "soft" (rekey now) or "hard" (SA is dead);
    ``reason`` is "bytes", "packets", "seq" (ESP sequence space) or "pn" (MACsec PN space)."""

    spi_or_sci: int | bytes
    kind: str
    reason: str


@dataclass(frozen=True)
class DecapResult:
    verdict: Verdict
    payload: bytes = b""  # ESP: the inner packet (tunnel) / upper-layer data (transport)
    next_header: int = 0
    seq: int = 0  # full (ESN-reconstructed) sequence number
    spi: int = 0


@dataclass(frozen=True)
class ValidateResult:
    verdict: Verdict
    frame: bytes = b""  # the Ethernet frame with SecTAG and ICV removed
    sci: bytes = b""
    an: int = 0
    pn: int = 0  # full (XPN-recovered) packet number
