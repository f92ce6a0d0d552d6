"""Capture decryption: ESP (raw protocol 50 and RFC 3948 UDP 4500, IPv4/IPv6 outer, tunnel and
transport, nested) and MACsec frames in a pcap/pcapng file, with the real data-plane transforms.

Per frame: walk the link layer (Ethernet with VLAN tags, Linux cooked v1/v2, BSD loopback, raw
IP), then
  * MACsec (EtherType 88E5): validate with a ``MacsecRx`` holding every configured SA and walk
    the resulting frame again (ESP over MACsec decrypts both);
  * IP: find ESP (:func:`ipsecemu.esp.framing.parse_outer`), pick the first ``esp_sa`` row that
    matches (version, src, dst, SPI) like Wireshark, decap; tunnel mode replaces the outer IP
    packet by the inner one (walked again: nested ESP), transport mode restores the original
    IP packet; the link header is kept with its EtherType/protocol fixed.

A capture is not a live stream: retransmits and reordering must decrypt, so ESP inbound SAs use
replay window 0 and MACsec replay protection is off.  ESN is not in Wireshark's key file, so
each SA is tried without and with ESN (seq_hi inferred from the highest sequence number seen);
the one that authenticates sticks.  Rows whose ICV is "NULL"/"ANY n bit [no checking]" are
decrypted without authentication (the data-plane contract has no such mode, see
:func:`_open_unverified`).

Frames failing (ICV, padding, malformed ESP/SecTAG) are counted, listed by frame number and
left out; frames without a key pass through unchanged.  Reading and writing the files is
:mod:`ipsecemu.pcap.pcapfile`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

from ipsecemu.base.algorithms import ESP_ENCR
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import (
    DecapResult,
    EspSaConfig,
    MacsecSaConfig,
    SecYConfig,
    Verdict,
)
from ipsecemu.dataplane import backend as get_backend
from ipsecemu.dataplane.api import EspInbound
from ipsecemu.esp import framing
from ipsecemu.pcap.coalesced import split_coalesced
from ipsecemu.pcap.pcapfile import (
    LT_ETHERNET,
    LT_IPV4,
    LT_IPV6,
    LT_LOOP,
    LT_NULL,
    LT_RAW,
    LT_SLL,
    LT_SLL2,
    RAW_ALIASES,
    SUPPORTED_LINKTYPES,
    DecryptError,
    PcapWriter,
    output_linktype,
    read_capture,
)
from ipsecemu.pcap.uat import EspAlgorithm, EspSaRow

__all__ = ["Failure", "Summary", "CaptureDecryptor", "decrypt_file"]

ETH_IPV4, ETH_IPV6, ETH_MACSEC = 0x0800, 0x86DD, 0x88E5
_VLAN_TPIDS = {0x8100, 0x88A8, 0x9100}
MAX_DEPTH = 8  # nested ESP / MACsec layers walked per frame (bounded work for any input)
TFC_NEXT_HEADER = 59
XPN_REORDER_WINDOW = 1 << 30

_FAILED = {
    Verdict.BAD_ICV: "authentication failed (ICV mismatch)",
    Verdict.BAD_PADDING: "bad padding after decryption (wrong key?)",
    Verdict.TOO_SHORT: "truncated",
    Verdict.BAD_ALIGNMENT: "ciphertext length not a multiple of the block size",
    Verdict.BAD_HEADER: "malformed SecTAG",
    Verdict.EXHAUSTED: "SA exhausted",
    Verdict.REPLAY: "replay",
}


@dataclass(frozen=True)
class Failure:
    frame: int
    reason: str


@dataclass
class Summary:
    frames: int = 0
    decrypted: int = 0  # frames with at least one layer removed
    esp: int = 0  # ESP layers decrypted
    macsec: int = 0  # MACsec layers validated/decrypted
    failed: int = 0
    passed: int = 0  # copied through unchanged
    dummy: int = 0  # ESP TFC dummy packets (next header 59): nothing to write
    no_key: int = 0  # ESP/MACsec frames passed through for lack of a key
    truncated: int = 0  # cut by the capture's snaplen and not decryptable: copied unchanged
    coalesced: int = 0  # frames of several ESP-in-UDP datagrams (UDP GSO/GRO), split and each decrypted
    clamped: int = 0  # timestamps past the classic pcap limit (2106), written as the limit
    written: int = 0  # records in the output file
    failures: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f", TFC dummies dropped: {self.dummy}" if self.dummy else ""
        extra += f", truncated by snaplen: {self.truncated}" if self.truncated else ""
        extra += f", GSO/GRO-merged frames split: {self.coalesced}" if self.coalesced else ""
        nokey = f" ({self.no_key} encrypted without a key)" if self.no_key else ""
        return (f"frames read: {self.frames}, decrypted: {self.decrypted} (ESP layers: {self.esp}, "
                f"MACsec layers: {self.macsec}), failed: {self.failed}, "
                f"passed through: {self.passed}{nokey}{extra}")


class _Fail(Exception):  # internal: control flow inside one frame, never escapes decrypt_file
    pass


class _Dummy(Exception):  # internal: control flow (TFC dummy), never escapes decrypt_file
    pass


# ------------------------------------------------------------------ unverified ESP (no ICV check)
def _open_unverified(alg: EspAlgorithm, enc_key: bytes, esp: bytes) -> DecapResult:
    """Decrypt a CBC/NULL ESP packet *without* checking its ICV (Wireshark's "NULL" and "ANY n bit
    [no checking]" authentication, for captures whose integrity key is unknown).  The data-plane
    contract always authenticates, so this one small path uses ``cryptography`` directly."""
    _keylens, _salt, iv_len, block, _icv = ESP_ENCR[alg.encr]
    spi, seq = struct.unpack_from("!II", esp) if len(esp) >= 8 else (0, 0)
    body_len = len(esp) - 8 - iv_len - alg.icv_len
    if body_len < max(block, 2):
        return DecapResult(Verdict.TOO_SHORT, spi=spi, seq=seq)
    if body_len % block:
        return DecapResult(Verdict.BAD_ALIGNMENT, spi=spi, seq=seq)
    iv, ct = esp[8:8 + iv_len], esp[8 + iv_len:8 + iv_len + body_len]
    if alg.encr == "null":
        pt = ct
    else:
        if alg.encr == "3des-cbc":
            cipher: CipherAlgorithm = TripleDES(enc_key)
        else:
            cipher = algorithms.AES(enc_key)
        dec = Cipher(cipher, modes.CBC(iv)).decryptor()
        pt = dec.update(ct) + dec.finalize()
    pad_len, nh = pt[-2], pt[-1]
    if pad_len > len(pt) - 2 or pt[-2 - pad_len:-2] != bytes(range(1, pad_len + 1)):
        return DecapResult(Verdict.BAD_PADDING, spi=spi, seq=seq)
    if nh == TFC_NEXT_HEADER:
        return DecapResult(Verdict.TFC_DUMMY, next_header=nh, spi=spi, seq=seq)
    return DecapResult(Verdict.OK, pt[:len(pt) - 2 - pad_len], nh, seq, spi)


class _EspSa:
    """Decryption state for one (esp_sa row, SPI): non-ESN and ESN inbound SAs, window 0."""

    def __init__(self, be: ModuleType, row: EspSaRow, alg: EspAlgorithm, spi: int) -> None:
        self.row, self.alg, self.spi = row, alg, spi
        self._be = be
        self._inbound: dict[bool, EspInbound] = {}
        self._esn = False  # the variant that last authenticated

    def _sa(self, esn: bool) -> EspInbound:
        if esn not in self._inbound:
            cfg = EspSaConfig(spi=self.spi, encr=self.alg.encr, enc_key=self.row.enc_key, integ=self.alg.integ,
                              integ_key=self.row.auth_key if self.alg.integ else b"", esn=esn, replay_window=0)
            self._inbound[esn] = self._be.EspInbound(cfg)
        return self._inbound[esn]

    def decap(self, esp: bytes) -> DecapResult:
        if not self.alg.verify:
            return _open_unverified(self.alg, self.row.enc_key, esp)
        res: DecapResult = self._sa(self._esn).decap(esp)
        if res.verdict == Verdict.BAD_ICV:
            other: DecapResult = self._sa(not self._esn).decap(esp)
            if other.verdict in (Verdict.OK, Verdict.TFC_DUMMY):
                self._esn = not self._esn
                return other
        return res


class CaptureDecryptor:
    """Decrypts frames one at a time; holds the per-SA state across a capture."""

    def __init__(self, esp_rows: Sequence[EspSaRow] = (), macsec_sas: Sequence[MacsecSaConfig] = (),
                 *, backend: str = "auto") -> None:
        self._be = get_backend(backend)
        self.rows: list[tuple[EspSaRow, EspAlgorithm]] = []
        self.summary = Summary()
        for row in esp_rows:
            alg = row.algorithm()
            if alg is None:
                where = f"line {row.line}: " if row.line else ""
                self.summary.warnings.append(f"{where}{row.unsupported_reason()}; row ignored")
                continue
            self.rows.append((row, alg))
        self._esp: dict[tuple[int, int], _EspSa] = {}
        self._macsec = None
        if macsec_sas:
            # No replay check; the window still matters: XPN recovers the PN's high half from the
            # lowest acceptable PN (next_pn - window), so a wide one lets reordered frames decrypt.
            self._macsec = self._be.MacsecRx(
                SecYConfig(replay_protect=False, replay_window=XPN_REORDER_WINDOW, validate="strict"))
            for sa in macsec_sas:
                self._macsec.add_sa(sa)
        self._layers = 0
        self._nokey = False

    # -------------------------------------------------------------- per frame
    def process(self, frame_no: int, linktype: int, data: bytes) -> bytes | None:
        """Return the frame to write (decrypted or unchanged) or None to leave it out."""
        s = self.summary
        s.frames += 1
        self._layers = 0
        self._nokey = False
        try:
            out = self._link(linktype, data, 0)
        except _Fail as exc:
            s.failed += 1
            s.failures.append(Failure(frame_no, str(exc)))
            return None
        except _Dummy:
            s.dummy += 1
            return None
        if self._layers:
            s.decrypted += 1
            return out
        s.passed += 1
        s.no_key += self._nokey
        return data

    def _link(self, linktype: int, data: bytes, depth: int) -> bytes:
        if linktype == LT_ETHERNET:
            return self._ethernet(data, depth)
        if linktype in (LT_RAW, LT_IPV4, LT_IPV6) or linktype in RAW_ALIASES:
            return self._ip(data, depth)
        if linktype in (LT_NULL, LT_LOOP) and len(data) > 4:
            before = self._layers
            new = self._ip(data[4:], depth)
            if self._layers == before:
                return data
            return self._null_header(linktype, data[:4], new[0] >> 4) + new
        if linktype == LT_SLL and len(data) >= 16:
            return self._with_proto(data, 14, 16, depth)
        if linktype == LT_SLL2 and len(data) >= 20:
            return self._with_proto(data, 0, 20, depth)
        return data

    def _with_proto(self, data: bytes, proto_off: int, hdr_len: int, depth: int) -> bytes:
        etype = struct.unpack_from("!H", data, proto_off)[0]
        if etype not in (ETH_IPV4, ETH_IPV6):
            return data
        before = self._layers
        new = self._ip(data[hdr_len:], depth)
        if self._layers == before:
            return data
        hdr = bytearray(data[:hdr_len])
        struct.pack_into("!H", hdr, proto_off, ETH_IPV4 if new[0] >> 4 == 4 else ETH_IPV6)
        return bytes(hdr) + new

    @staticmethod
    def _null_header(linktype: int, hdr: bytes, version: int) -> bytes:
        if linktype == LT_LOOP or hdr[:2] == b"\x00\x00":  # network byte order
            return struct.pack("!I", 2 if version == 4 else 24)
        return struct.pack("<I", 2 if version == 4 else 24)

    def _ethernet(self, frame: bytes, depth: int) -> bytes:
        if len(frame) < 14:
            return frame
        off = 12
        while off + 6 <= len(frame) and struct.unpack_from("!H", frame, off)[0] in _VLAN_TPIDS:
            off += 4
        etype = struct.unpack_from("!H", frame, off)[0]
        if etype == ETH_MACSEC:
            return self._macsec_frame(frame, off, depth)
        if etype in (ETH_IPV4, ETH_IPV6):
            before = self._layers
            new = self._ip(frame[off + 2:], depth)
            if self._layers == before:
                return frame
            new_type = ETH_IPV4 if new[0] >> 4 == 4 else ETH_IPV6
            return frame[:off] + struct.pack("!H", new_type) + new
        return frame

    def _macsec_frame(self, frame: bytes, off: int, depth: int) -> bytes:
        if self._macsec is None or depth >= MAX_DEPTH:
            self._nokey = True
            return frame
        tags = frame[12:off]  # VLAN tags captured outside the SecTAG are put back afterwards
        try:
            res = self._macsec.validate(frame[:12] + frame[off:])
        except Exception as exc:  # a transform bug must not abort the whole capture
            raise _Fail(f"MACsec: data-plane error: {type(exc).__name__}: {exc}") from None
        if res.verdict == Verdict.UNKNOWN_SA:
            self._nokey = True
            return frame
        if res.verdict != Verdict.OK:
            reason = _FAILED.get(res.verdict, res.verdict.name)
            raise _Fail(f"MACsec SCI {res.sci.hex() or '?'} AN {res.an} PN {res.pn}: {reason}")
        self._layers += 1
        self.summary.macsec += 1
        inner = res.frame[:12] + tags + res.frame[12:]
        return self._ethernet(inner, depth + 1)

    def _ip(self, packet: bytes, depth: int) -> bytes:
        if depth >= MAX_DEPTH:
            return packet
        try:
            outer = framing.parse_outer(packet)
        except framing.FramingError:
            return packet  # not ours to judge: copied through
        if outer.kind != "esp":
            return packet
        esp = outer.payload
        if len(esp) < 8:  # not even SPI + sequence number: nothing to look a key up by
            return packet
        spi, seq = struct.unpack_from("!II", esp)
        sa = self._find_sa(outer.ip.version, outer.ip.src, outer.ip.dst, spi)
        if sa is None:
            self._nokey = True
            return packet
        try:
            res = sa.decap(esp)
        except Exception as exc:  # a transform bug must not abort the whole capture
            raise _Fail(f"ESP SPI 0x{spi:08x} seq {seq}: data-plane error: {type(exc).__name__}: {exc}") from None
        where = f"ESP SPI 0x{spi:08x} seq {seq} ({outer.ip.src} -> {outer.ip.dst})"
        if res.verdict == Verdict.TFC_DUMMY:
            self._layers += 1
            self.summary.esp += 1
            raise _Dummy()
        if res.verdict != Verdict.OK:
            raise _Fail(f"{where}: {_FAILED.get(res.verdict, res.verdict.name)}")
        self._layers += 1
        self.summary.esp += 1
        if res.next_header in (framing.IPIP_PROTO, framing.IPV6_PROTO):
            return self._ip(res.payload, depth + 1)  # tunnel mode; the inner packet may be ESP again
        try:
            return framing.restore_transport(outer.header, res.next_header, res.payload)
        except framing.FramingError as exc:
            raise _Fail(f"{where}: cannot rebuild the transport-mode packet: {exc}") from None

    def _find_sa(self, version: int, src: str, dst: str, spi: int) -> _EspSa | None:
        for i, (row, alg) in enumerate(self.rows):
            if row.matches(version, src, dst, spi):
                key = (i, spi)
                if key not in self._esp:
                    try:
                        sa = _EspSa(self._be, row, alg, spi)
                        if alg.verify:
                            sa._sa(False)  # validates the configuration now
                    except ConfigError as exc:
                        raise _Fail(f"ESP SPI 0x{spi:08x}: key file row {row.line or i + 1}: {exc}") from None
                    self._esp[key] = sa
                return self._esp[key]
        return None


def decrypt_file(in_path: str | Path, out_path: str | Path, esp_rows: Sequence[EspSaRow] = (),
                 macsec_sas: Sequence[MacsecSaConfig] = (), *, backend: str = "auto") -> Summary:
    """Decrypt ``in_path`` into ``out_path``; returns the summary (failures listed in it)."""
    linktype, nano, records = read_capture(in_path)
    dec = CaptureDecryptor(esp_rows, macsec_sas, backend=backend)
    if linktype not in SUPPORTED_LINKTYPES:
        dec.summary.warnings.append(f"link type {linktype} is not supported; frames are copied unchanged")
    out_lt = output_linktype(linktype)
    try:
        f = open(out_path, "wb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DecryptError(f"cannot write {out_path}: {exc.strerror or exc}") from None
    with f:
        summary = dec.summary
        writer = PcapWriter(f, out_lt, nano, summary)
        n = 0
        it = iter(records)
        while True:
            # only reading may stop the loop (a corrupt record mid-file: keep what was read so
            # far); a frame that was read is always written, or counted as failed / TFC dummy
            try:
                rec = next(it, None)
            except Exception as exc:  # noqa: BLE001 - scapy raises assorted errors on corrupt blocks
                summary.warnings.append(f"capture unreadable after frame {n}: {type(exc).__name__}: {exc}")
                break
            if rec is None:
                break
            n += 1
            if rec.linktype != linktype:
                summary.warnings.append(
                    f"frame {n}: link type {rec.linktype} differs from the first frame's ({linktype}); "
                    "copied unchanged")
                summary.frames += 1
                summary.passed += 1
                writer.write(rec, rec.data, True)
                continue
            failed = summary.failed
            failures = len(summary.failures)
            out = dec.process(n, linktype, rec.data)
            if out is None and summary.failed > failed:
                parts = split_coalesced(rec.data, linktype)
                if parts:  # a UDP GSO train / GRO merge of several ESP datagrams: not an ICV failure
                    frames = summary.frames
                    summary.failed -= 1
                    del summary.failures[failures:]
                    for part in parts:
                        pout = dec.process(n, linktype, part)
                        if pout is not None:
                            writer.write(rec, pout, False)
                    summary.frames = frames  # one frame read, whatever it held
                    summary.coalesced += 1
                    continue
            if rec.wirelen > len(rec.data) and (out is rec.data or summary.failed > failed):
                # cut by the snaplen and not decrypted: no verdict is possible on a partial frame;
                # copied unchanged and reported once (with a count) below, not as a failure each
                if out is None:
                    summary.failed -= 1
                    del summary.failures[failures:]
                    summary.passed += 1
                    out = rec.data
                summary.truncated += 1
            if out is not None:
                writer.write(rec, out, out is rec.data)
        if summary.truncated:
            summary.warnings.append(f"truncated by snaplen: {summary.truncated} frame(s) could not be "
                                    "decrypted and were copied unchanged")
        if summary.clamped:
            summary.warnings.append(f"{summary.clamped} timestamp(s) after 2106 do not fit a pcap file; "
                                    "written as 2106-02-07 06:28:15")
    return dec.summary
