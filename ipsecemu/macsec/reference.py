"""Pure-Python reference MACsec SecY (IEEE 802.1AE-2018, XPN per 802.1AEbw-2013).

This is the oracle the C data plane is checked against byte for byte, so it follows the
per-packet rules in ``ipsecemu/dataplane/api.py`` literally and favours clarity over speed.
GCM comes from pyca/cryptography; one AESGCM object is kept per SA.

Details api.py leaves open, fixed here so the C backend can match them:

* RX picks confidentiality vs integrity-only from the frame's E bit, not from the SecY
  setting (E=0 with C=1 is treated as integrity-only).
* XPN: a stale copy whose wire PN is below the low half of the lowest acceptable PN is read
  as the next 2^32 block (802.1AEbw), so it fails with BAD_ICV rather than REPLAY.  A
  recovery that would leave the 64-bit space is BAD_HEADER.
* TX soft "pn" event: checked after each sent frame, fires once when next_pn >= threshold;
  hard "pn" event: fires right after the last PN (2^32-1 / 2^64-1) was used.
* Counters: ``MacsecRx.counters`` holds drops before an SA is found (too_short, bad_header
  from the SecTAG checks, not_protected, unknown_sa); later drops and successes are counted
  per SA.  Untagged frames passed through in "check"/"disabled" are not counted.
  ``bytes`` counts secure-data bytes (the frame from its EtherType on) in both directions.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import (
    ExpireEvent,
    MacsecSaConfig,
    SaCounters,
    SecYConfig,
    ValidateResult,
    Verdict,
)
from ipsecemu.macsec.sectag import ETH_ADDRS_LEN, SecTag, implicit_sci, parse, short_length
from ipsecemu.macsec.xpn import PN32_MAX, PN64_MAX, recover_pn, xpn_iv


class _Gcm:
    """The per-SA crypto: the AESGCM object plus the IV rule of the cipher suite."""

    def __init__(self, sa: MacsecSaConfig) -> None:
        self.aead = AESGCM(sa.sak)
        self.xpn = sa.xpn
        self.sci = sa.sci
        self.ssci = sa.ssci or 0
        self.salt = sa.salt or b""
        self.max_pn = PN64_MAX if sa.xpn else PN32_MAX

    def iv(self, pn: int) -> bytes:
        if self.xpn:
            return xpn_iv(self.ssci, self.salt, pn)
        return self.sci + pn.to_bytes(4, "big")


class MacsecTx:
    """The transmit side of one SecY with its current SA.  Only this object owns the PN."""

    def __init__(self, secy: SecYConfig, sa: MacsecSaConfig) -> None:
        self.secy = secy
        self.sa = sa
        self._gcm = _Gcm(sa)
        self._next_pn = sa.next_pn
        self.counters = SaCounters()
        self._events: list[ExpireEvent] = []
        self._fired: set[str] = set()
        threshold = secy.pn_exhaustion_threshold
        self._soft_at = threshold << 32 if sa.xpn else threshold

    @property
    def next_pn(self) -> int:
        return self._next_pn

    def _fire(self, kind: str) -> None:
        if kind not in self._fired:
            self._fired.add(kind)
            self._events.append(ExpireEvent(self.sa.sci, kind, "pn"))

    def protect(self, frame: bytes) -> tuple[Verdict, bytes]:
        if len(frame) < ETH_ADDRS_LEN + 2:
            self.counters.too_short += 1
            return Verdict.TOO_SHORT, b""
        pn = self._next_pn
        if pn > self._gcm.max_pn:  # a PN is never reused: the SA needs a new SAK
            self.counters.exhausted += 1
            return Verdict.EXHAUSTED, b""
        secy = self.secy
        secure = bytes(frame[ETH_ADDRS_LEN:])
        conf = secy.confidentiality
        tag = SecTag(
            an=self.sa.an,
            pn=pn & PN32_MAX,
            sl=short_length(len(secure)),
            sci=self.sa.sci if secy.include_sci else None,
            es=secy.end_station and not secy.include_sci,
            e=conf,
            c=conf,
        )
        header = bytes(frame[:ETH_ADDRS_LEN]) + tag.encode()
        iv = self._gcm.iv(pn)
        if conf:
            out = header + self._gcm.aead.encrypt(iv, secure, header)
        else:  # integrity only: GMAC over everything, the data stays in clear
            out = header + secure + self._gcm.aead.encrypt(iv, b"", header + secure)
        self._next_pn = pn + 1
        self.counters.packets += 1
        self.counters.bytes += len(secure)
        if self._next_pn >= self._soft_at:
            self._fire("soft")
        if pn == self._gcm.max_pn:
            self._fire("hard")
        return Verdict.OK, out

    def protect_batch(self, frames: Iterable[bytes]) -> list[tuple[Verdict, bytes]]:
        return [self.protect(f) for f in frames]

    def poll_events(self) -> list[ExpireEvent]:
        events, self._events = self._events, []
        return events


class _RxSa:
    def __init__(self, cfg: MacsecSaConfig) -> None:
        self.cfg = cfg
        self.gcm = _Gcm(cfg)
        self.next_pn = cfg.next_pn
        self.counters = SaCounters()


class MacsecRx:
    """The receive side of one SecY: all receive SAs, keyed by (SCI, AN).

    ``counters`` counts drops that happen before an SA is known (too_short, bad_header from
    the SecTAG, not_protected, unknown_sa); everything after that is counted per SA.
    """

    def __init__(self, secy: SecYConfig) -> None:
        self.secy = secy
        self._sas: dict[tuple[bytes, int], _RxSa] = {}
        self.counters = SaCounters()

    def add_sa(self, sa: MacsecSaConfig) -> None:
        """Install (or replace, as when an AN is reused for a new SAK) a receive SA."""
        self._sas[(bytes(sa.sci), sa.an)] = _RxSa(sa)

    def remove_sa(self, sci: bytes, an: int) -> None:
        if self._sas.pop((bytes(sci), an), None) is None:
            raise ConfigError(f"sci/an: no receive SA for SCI {bytes(sci).hex()} AN {an}")

    def counters_for(self, sci: bytes, an: int) -> SaCounters:
        rx = self._sas.get((bytes(sci), an))
        if rx is None:
            raise ConfigError(f"sci/an: no receive SA for SCI {bytes(sci).hex()} AN {an}")
        return rx.counters

    def next_pn_for(self, sci: bytes, an: int) -> int:
        """The SA's next expected PN (lowest acceptable PN + replay window)."""
        rx = self._sas.get((bytes(sci), an))
        if rx is None:
            raise ConfigError(f"sci/an: no receive SA for SCI {bytes(sci).hex()} AN {an}")
        return rx.next_pn

    def validate(self, frame: bytes) -> ValidateResult:
        secy = self.secy
        parsed = parse(frame)
        if parsed.verdict is Verdict.NOT_PROTECTED:
            if secy.validate == "strict":
                self.counters.not_protected += 1
                return ValidateResult(Verdict.NOT_PROTECTED)
            return ValidateResult(Verdict.OK, bytes(frame))
        tag = parsed.tag
        if parsed.verdict is not Verdict.OK or tag is None:
            self._count(self.counters, parsed.verdict)
            return ValidateResult(parsed.verdict, sci=(tag.sci or b"") if tag else b"", an=tag.an if tag else 0)

        sci = tag.sci if tag.sci is not None else implicit_sci(frame[6:12])
        rx = self._sas.get((sci, tag.an))
        if rx is None:
            self.counters.unknown_sa += 1
            return ValidateResult(Verdict.UNKNOWN_SA, sci=sci, an=tag.an, pn=tag.pn)
        c = rx.counters

        lowest = max(1, rx.next_pn - secy.replay_window)
        pn: int | None = recover_pn(tag.pn, lowest) if rx.gcm.xpn else tag.pn
        if not pn:  # PN 0 is never sent; None: XPN recovery left the 64-bit space
            c.bad_header += 1
            return ValidateResult(Verdict.BAD_HEADER, sci=sci, an=tag.an, pn=pn or 0)
        if secy.replay_protect and pn < lowest:
            c.replay += 1
            return ValidateResult(Verdict.REPLAY, sci=sci, an=tag.an, pn=pn)

        header = bytes(frame[: parsed.header_len])
        iv = rx.gcm.iv(pn)
        if tag.e:
            try:
                plain = rx.gcm.aead.decrypt(iv, parsed.secure_data + parsed.icv, header)
            except InvalidTag:
                c.bad_icv += 1
                return ValidateResult(Verdict.BAD_ICV, sci=sci, an=tag.an, pn=pn)
        else:
            plain = parsed.secure_data
            if secy.validate != "disabled":
                try:
                    rx.gcm.aead.decrypt(iv, parsed.icv, header + plain)
                except InvalidTag:
                    c.bad_icv += 1
                    # "check" delivers the unverified frame but still reports it
                    out = bytes(frame[:ETH_ADDRS_LEN]) + plain if secy.validate == "check" else b""
                    return ValidateResult(Verdict.BAD_ICV, out, sci=sci, an=tag.an, pn=pn)

        rx.next_pn = max(rx.next_pn, pn + 1)
        c.packets += 1
        c.bytes += len(plain)
        return ValidateResult(Verdict.OK, bytes(frame[:ETH_ADDRS_LEN]) + plain, sci=sci, an=tag.an, pn=pn)

    def validate_batch(self, frames: Iterable[bytes]) -> list[ValidateResult]:
        return [self.validate(f) for f in frames]

    @staticmethod
    def _count(counters: SaCounters, verdict: Verdict) -> None:
        if verdict is Verdict.TOO_SHORT:
            counters.too_short += 1
        elif verdict is Verdict.BAD_HEADER:
            counters.bad_header += 1
