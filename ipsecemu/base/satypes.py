"""Plain data shared by the protocol cores (ike, esp, macsec) and the data-path backends.

SA configurations, per-packet verdicts, counters and expire events.  They live here, below both
``ipsecemu.dataplane`` and the cores, so neither imports the other for them.  The per-packet
semantics the backends implement with these types are written down in ``ipsecemu.dataplane.api``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ipsecemu.base.algorithms import AEAD_ESP_ENCR, ESP_ENCR, ESP_INTEG, MACSEC_CIPHERS
from ipsecemu.base.errors import ConfigError


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


MAX_REPLAY_WINDOW = 4096


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
