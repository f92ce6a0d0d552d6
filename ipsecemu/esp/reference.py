"""Pure-Python reference ESP (RFC 4303): the oracle for the C fast path and its fallback.

Implements ``EspOutbound``, ``EspInbound`` and ``EspInboundTable`` exactly as described in
:mod:`ipsecemu.dataplane` with the per-packet semantics of :mod:`ipsecemu.dataplane.api`.
Works on bare ESP packets (``SPI | seq | IV | ciphertext | ICV``); outer headers are the job
of :mod:`ipsecemu.esp.framing`.  Cipher and HMAC objects are built once per SA because this
is also the fallback data path.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsecemu.base.algorithms import AEAD_ESP_ENCR, ESP_ENCR, ESP_INTEG
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import (
    DecapResult,
    EspSaConfig,
    ExpireEvent,
    Lifetime,
    SaCounters,
    Verdict,
)
from ipsecemu.esp.replay import ReplayWindow

try:  # cryptography >= 43 moved TripleDES to the "decrepit" module
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    TripleDES = algorithms.TripleDES  # type: ignore[misc]

__all__ = ["EspOutbound", "EspInbound", "EspInboundTable", "TFC_NEXT_HEADER"]

TFC_NEXT_HEADER = 59  # "no next header": a traffic-flow-confidentiality dummy packet
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"md5": hashes.MD5, "sha1": hashes.SHA1, "sha256": hashes.SHA256,
           "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_MAX32 = (1 << 32) - 1
_MAX64 = (1 << 64) - 1


class _Transform:
    """The keyed cipher + integrity state of one SA (shared by both directions' code)."""

    def __init__(self, cfg: EspSaConfig) -> None:
        keylens, salt_len, self.iv_len, self.block, encr_icv = ESP_ENCR[cfg.encr]
        self.aead = cfg.encr in AEAD_ESP_ENCR
        self.esn = cfg.esn
        self.spi_bytes = cfg.spi.to_bytes(4, "big")
        key = cfg.enc_key[: len(cfg.enc_key) - salt_len]
        self.salt = cfg.enc_key[len(cfg.enc_key) - salt_len:]
        self._aead_obj: AESGCM | ChaCha20Poly1305 | None = None
        self._aes: algorithms.AES | None = None
        self._block_alg: algorithms.AES | TripleDES | None = None
        self._hmac: crypto_hmac.HMAC | None = None
        if self.aead:
            self.icv_len = encr_icv
            if cfg.encr == "chacha20-poly1305":
                self._aead_obj = ChaCha20Poly1305(key)
            else:
                self._aead_obj = AESGCM(key)
                # AESGCM only takes 16-byte tags; truncated ICVs are checked via Cipher/GCM.
                self._aes = algorithms.AES(key)
        else:
            assert cfg.integ is not None  # guaranteed by validate_esp_config
            _klen, self.icv_len, hname = ESP_INTEG[cfg.integ]
            self._hmac = crypto_hmac.HMAC(cfg.integ_key, _HASHES[hname]())
            if cfg.encr == "aes-cbc":
                self._block_alg = algorithms.AES(key)
            elif cfg.encr == "3des-cbc":
                self._block_alg = TripleDES(key)
        self.min_len = 8 + self.iv_len + self.icv_len + self.block

    def aad(self, seq: int) -> bytes:
        if self.esn:
            return self.spi_bytes + struct.pack(">II", seq >> 32, seq & _MAX32)
        return self.spi_bytes + struct.pack(">I", seq & _MAX32)

    def mac(self, header_iv_ct: bytes, seq: int) -> bytes:
        assert self._hmac is not None
        h = self._hmac.copy()
        h.update(header_iv_ct)
        if self.esn:
            h.update(struct.pack(">I", seq >> 32))  # RFC 4303 2.2.1: seq_hi is appended, not sent
        return h.finalize()[: self.icv_len]

    def seal(self, header: bytes, iv: bytes, plaintext: bytes, seq: int) -> bytes:
        """Return ``IV | ciphertext | ICV`` for one padded plaintext."""
        if self.aead:
            assert self._aead_obj is not None
            out = self._aead_obj.encrypt(self.salt + iv, plaintext, self.aad(seq))
            # A truncated GCM tag is the prefix of the full one (NIST SP 800-38D 5.2.1.2).
            return iv + out[: len(plaintext) + self.icv_len]
        if self._block_alg is not None:
            enc = Cipher(self._block_alg, modes.CBC(iv)).encryptor()
            body = iv + enc.update(plaintext) + enc.finalize()
        else:
            body = iv + plaintext  # NULL encryption
        return body + self.mac(header + body, seq)

    def open(self, packet: bytes, seq: int) -> bytes | None:
        """Authenticate then decrypt; None on ICV failure.  ``packet`` is the whole ESP packet."""
        iv = packet[8: 8 + self.iv_len]
        ct_end = len(packet) - self.icv_len
        icv = packet[ct_end:]
        if self.aead:
            ct = packet[8 + self.iv_len: ct_end]
            try:
                if self.icv_len == 16:
                    assert self._aead_obj is not None
                    return self._aead_obj.decrypt(self.salt + iv, ct + icv, self.aad(seq))
                assert self._aes is not None
                dec = Cipher(self._aes, modes.GCM(self.salt + iv, icv, min_tag_length=self.icv_len)).decryptor()
                dec.authenticate_additional_data(self.aad(seq))
                return dec.update(ct) + dec.finalize()
            except InvalidTag:
                return None
        assert self._hmac is not None
        h = self._hmac.copy()
        h.update(packet[:ct_end])
        if self.esn:
            h.update(struct.pack(">I", seq >> 32))
        # Constant-time compare of the truncated ICV.
        expected = h.finalize()[: self.icv_len]
        if not hmac.compare_digest(expected, icv):
            return None
        ct = packet[8 + self.iv_len: ct_end]
        if self._block_alg is None:
            return ct
        cbc = Cipher(self._block_alg, modes.CBC(iv)).decryptor()
        return cbc.update(ct) + cbc.finalize()


class _Lifetimes:
    """Lifetime bookkeeping shared by both directions: refuse at hard, events once each."""

    def __init__(self, spi: int, lifetime: Lifetime, counters: SaCounters) -> None:
        self._spi = spi
        self._lt = lifetime
        self._c = counters
        self._fired: set[tuple[str, str]] = set()
        self.events: list[ExpireEvent] = []

    def hard_reached(self) -> bool:
        lt, c = self._lt, self._c
        return bool((lt.hard_packets and c.packets >= lt.hard_packets)
                    or (lt.hard_bytes and c.bytes >= lt.hard_bytes))

    def fire(self, kind: str, reason: str) -> None:
        if (kind, reason) not in self._fired:
            self._fired.add((kind, reason))
            self.events.append(ExpireEvent(self._spi, kind, reason))

    def account(self, nbytes: int) -> None:
        lt, c = self._lt, self._c
        c.packets += 1
        c.bytes += nbytes
        if lt.soft_packets and c.packets >= lt.soft_packets:
            self.fire("soft", "packets")
        if lt.hard_packets and c.packets >= lt.hard_packets:
            self.fire("hard", "packets")
        if lt.soft_bytes and c.bytes >= lt.soft_bytes:
            self.fire("soft", "bytes")
        if lt.hard_bytes and c.bytes >= lt.hard_bytes:
            self.fire("hard", "bytes")

    def poll(self) -> list[ExpireEvent]:
        out, self.events = self.events, []
        return out


class EspOutbound:
    """Outbound ESP SA: ``encap`` turns a payload into one ESP packet."""

    def __init__(self, cfg: EspSaConfig, *, initial_seq: int = 1) -> None:
        self.cfg = cfg
        self._t = _Transform(cfg)
        self.max_seq = _MAX64 if cfg.esn else _MAX32
        if not 1 <= initial_seq <= self.max_seq:
            raise ConfigError(f"initial_seq: must be 1..{self.max_seq}, got {initial_seq}")
        if cfg.seq_soft_margin < 0:
            raise ConfigError(f"seq_soft_margin: must be >= 0, got {cfg.seq_soft_margin}")
        self.next_seq = initial_seq
        self.counters = SaCounters()
        self._life = _Lifetimes(cfg.spi, cfg.lifetime, self.counters)
        self._random: Callable[[int], bytes] = os.urandom

    def encap(self, payload: bytes, next_header: int, *, iv: bytes | None = None) -> tuple[Verdict, bytes]:
        if not 0 <= next_header <= 255:
            raise ValueError(f"next_header: must be 0..255, got {next_header}")
        t = self._t
        if iv is not None and len(iv) != t.iv_len:
            raise ValueError(f"iv: {self.cfg.encr} needs a {t.iv_len}-byte IV, got {len(iv)}")
        if self.next_seq > self.max_seq or self._life.hard_reached():
            self.counters.exhausted += 1
            return Verdict.EXHAUSTED, b""
        seq = self.next_seq
        if iv is None:
            iv = seq.to_bytes(8, "big") if t.aead else self._random(t.iv_len)
        pad_len = -(len(payload) + 2) % t.block
        plaintext = b"".join((payload, bytes(range(1, pad_len + 1)), bytes((pad_len, next_header))))
        header = t.spi_bytes + struct.pack(">I", seq & _MAX32)
        packet = header + t.seal(header, iv, plaintext, seq)
        self.next_seq = seq + 1
        self._life.account(len(payload))
        remaining = self.max_seq - seq
        if remaining <= self.cfg.seq_soft_margin:
            self._life.fire("soft", "seq")
        if remaining == 0:
            self._life.fire("hard", "seq")
        return Verdict.OK, packet

    def encap_batch(
        self, payloads: Sequence[bytes], next_header: int, *, ivs: Sequence[bytes | None] | None = None
    ) -> list[tuple[Verdict, bytes]]:
        if ivs is not None and len(ivs) != len(payloads):
            raise ValueError(f"ivs: need one IV per payload ({len(payloads)}), got {len(ivs)}")
        return [self.encap(p, next_header, iv=None if ivs is None else ivs[i]) for i, p in enumerate(payloads)]

    def poll_events(self) -> list[ExpireEvent]:
        return self._life.poll()


class EspInbound:
    """Inbound ESP SA: ``decap`` checks, authenticates, decrypts and commits one packet.

    ``replay_top`` (keyword-only, reference addition) starts the window as if that full
    sequence number had already been received, e.g. to resume an SA or to replay ESN vectors
    whose seq_hi is far from 0.
    """

    def __init__(self, cfg: EspSaConfig, *, replay_top: int = 0) -> None:
        self.cfg = cfg
        self._t = _Transform(cfg)
        try:
            self.window = ReplayWindow(cfg.replay_window, cfg.esn, top=replay_top)
        except ValueError as exc:
            raise ConfigError(f"replay_top: {exc}") from None
        self.counters = SaCounters()
        self._life = _Lifetimes(cfg.spi, cfg.lifetime, self.counters)

    def _drop(self, verdict: Verdict, spi: int) -> DecapResult:
        c = self.counters
        name = verdict.name.lower()
        setattr(c, name, getattr(c, name) + 1)
        return DecapResult(verdict, spi=spi)

    def decap(self, packet: bytes) -> DecapResult:
        packet = bytes(packet)  # accept bytearray/memoryview; results are always bytes
        t = self._t
        n = len(packet)
        if n < t.min_len:
            self.counters.too_short += 1
            return DecapResult(Verdict.TOO_SHORT)
        spi, seq_lo = struct.unpack_from(">II", packet)
        if spi != self.cfg.spi:
            return self._drop(Verdict.UNKNOWN_SA, spi)
        if (n - 8 - t.iv_len - t.icv_len) % t.block:
            return self._drop(Verdict.BAD_ALIGNMENT, spi)
        if self._life.hard_reached():
            return self._drop(Verdict.EXHAUSTED, spi)
        seq = self.window.check(seq_lo)
        if seq is None:
            return self._drop(Verdict.REPLAY, spi)
        plaintext = t.open(packet, seq)
        if plaintext is None:
            return self._drop(Verdict.BAD_ICV, spi)
        pad_len, next_header = plaintext[-2], plaintext[-1]
        body_len = len(plaintext) - 2 - pad_len
        if body_len < 0 or plaintext[body_len:-2] != bytes(range(1, pad_len + 1)):
            return self._drop(Verdict.BAD_PADDING, spi)
        self.window.commit(seq)
        if next_header == TFC_NEXT_HEADER:
            self.counters.tfc_dummy += 1
            return DecapResult(Verdict.TFC_DUMMY, next_header=next_header, seq=seq, spi=spi)
        self._life.account(body_len)
        return DecapResult(Verdict.OK, plaintext[:body_len], next_header, seq, spi)

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        return [self.decap(p) for p in packets]

    def poll_events(self) -> list[ExpireEvent]:
        return self._life.poll()


class EspInboundTable:
    """The inbound SAD: SPI -> EspInbound.  Drops that belong to no SA (a packet too short to
    carry an SPI, an unknown SPI) are counted in the table-wide ``counters``."""

    def __init__(self) -> None:
        self._sas: dict[int, EspInbound] = {}
        self.counters = SaCounters()
        self._events: list[ExpireEvent] = []

    def add(self, cfg: EspSaConfig, *, replay_top: int = 0) -> EspInbound:
        if cfg.spi in self._sas:
            raise ConfigError(f"spi: an inbound SA with SPI {cfg.spi:#010x} already exists")
        sa = EspInbound(cfg, replay_top=replay_top)
        self._sas[cfg.spi] = sa
        return sa

    def remove(self, spi: int) -> None:
        sa = self._sas.pop(spi, None)
        if sa is None:
            raise ConfigError(f"spi: no inbound SA with SPI {spi:#010x}")
        self._events.extend(sa.poll_events())  # don't lose expire events of a removed SA

    def __contains__(self, spi: object) -> bool:
        return spi in self._sas

    def __len__(self) -> int:
        return len(self._sas)

    def decap(self, packet: bytes) -> DecapResult:
        if len(packet) < 8:
            self.counters.too_short += 1
            return DecapResult(Verdict.TOO_SHORT)
        spi = int.from_bytes(packet[:4], "big")
        sa = self._sas.get(spi)
        if sa is None:
            self.counters.unknown_sa += 1
            return DecapResult(Verdict.UNKNOWN_SA, spi=spi)
        return sa.decap(packet)

    def decap_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        return [self.decap(p) for p in packets]

    def counters_for(self, spi: int) -> SaCounters:
        sa = self._sas.get(spi)
        if sa is None:
            raise ConfigError(f"spi: no inbound SA with SPI {spi:#010x}")
        return sa.counters

    def poll_events(self) -> list[ExpireEvent]:
        out, self._events = self._events, []
        for sa in self._sas.values():
            out.extend(sa.poll_events())
        return out
