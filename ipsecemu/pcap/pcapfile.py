"""Capture files: reading pcap/pcapng records (via scapy's raw readers) and writing classic pcap
with the timestamps kept bit for bit, plus the link-type numbers both sides use."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ipsecemu.base.errors import InputError

__all__ = ["DecryptError", "Record", "read_capture", "output_linktype", "PcapWriter", "WriteCounts",
           "SUPPORTED_LINKTYPES", "RAW_ALIASES", "LT_NULL", "LT_ETHERNET", "LT_RAW", "LT_LOOP", "LT_SLL", "LT_IPV4",
           "LT_IPV6", "LT_SLL2"]

# link types (https://www.tcpdump.org/linktypes.html)
LT_NULL, LT_ETHERNET, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 0, 1, 101, 108, 113, 228, 229, 276
RAW_ALIASES = {12, 14}  # DLT_RAW values some systems write into pcap files
SUPPORTED_LINKTYPES = {LT_NULL, LT_ETHERNET, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2, *RAW_ALIASES}


class DecryptError(InputError):
    """A user-level problem with the input or output (message is printed, no traceback)."""


class WriteCounts(Protocol):
    """What the writer counts into (decrypt.Summary): records written, timestamps clamped."""

    written: int
    clamped: int


@dataclass(frozen=True)
class Record:
    """One captured frame as read (timestamp kept as the file had it)."""

    data: bytes
    sec: int
    frac: int  # micro- or nanoseconds, per the writer's resolution
    wirelen: int
    linktype: int


def read_capture(path: str | Path) -> tuple[int, bool, Iterator[Record]]:
    """Open a pcap or pcapng file: (link type, nanosecond timestamps, records)."""
    from scapy.error import Scapy_Exception  # lazy: scapy takes ~1 s to import
    from scapy.utils import RawPcapNgReader, RawPcapReader  # lazy: scapy takes ~1 s to import

    p = Path(path)
    if not p.exists():
        raise DecryptError(f"input file not found: {p}")
    if p.is_dir():
        raise DecryptError(f"input is a directory: {p}")
    try:
        reader = RawPcapReader(str(p))
    except (Scapy_Exception, EOFError, OSError, ValueError, struct.error) as exc:
        raise DecryptError(f"{p}: not a pcap or pcapng capture ({exc})") from None

    if isinstance(reader, RawPcapNgReader):
        it = iter(reader)
        try:
            first: tuple[bytes, Any] | None = next(it, None)  # scapy: (data, PacketMetadata)
        except Exception as exc:  # scapy raises assorted errors on corrupt blocks
            reader.close()
            raise DecryptError(f"{p}: cannot read pcapng: {exc}") from None
        if first is None:
            reader.close()
            return LT_ETHERNET, False, iter(())
        nano = first[1].tsresol > 1_000_000

        def ng_records() -> Iterator[Record]:
            try:
                item: tuple[bytes, Any] | None = first
                while item is not None:
                    data, m = item
                    ts = (m.tshigh << 32) | m.tslow
                    scale = 1_000_000_000 if nano else 1_000_000
                    sec, rest = divmod(ts, m.tsresol)
                    yield Record(data, sec, rest * scale // m.tsresol, m.wirelen or len(data), m.linktype)
                    item = next(it, None)
            finally:
                reader.close()

        return first[1].linktype, nano, ng_records()

    nano = bool(getattr(reader, "nano", False))

    def records() -> Iterator[Record]:
        try:
            for data, m in reader:
                yield Record(data, m.sec, m.usec, m.wirelen, reader.linktype)
        finally:
            reader.close()

    return reader.linktype, nano, records()


def output_linktype(linktype: int) -> int:
    # A decrypted frame may change IP version: one raw-IP link type carries both.
    return LT_RAW if linktype in (LT_IPV4, LT_IPV6) else linktype


class PcapWriter:
    """Classic little-endian pcap, written directly so timestamps are kept bit for bit."""

    # Classic pcap has 32-bit seconds (up to 2106); a pcapng record can be later.  Such a
    # timestamp is clamped to the last representable instant and counted (a warning names the
    # count) rather than switching the output format: every record read is still written.
    MAX_SEC = 0xFFFFFFFF

    def __init__(self, f: BinaryIO, linktype: int, nano: bool, summary: WriteCounts) -> None:
        self._f = f
        self._summary = summary
        self._frac_max = 999_999_999 if nano else 999_999
        magic = 0xA1B23C4D if nano else 0xA1B2C3D4
        f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype & 0xFFFFFFFF))

    def write(self, rec: Record, data: bytes, unchanged: bool) -> None:
        sec, frac = rec.sec, rec.frac
        if not 0 <= sec <= self.MAX_SEC:
            self._summary.clamped += 1
            sec, frac = (self.MAX_SEC, self._frac_max) if sec > 0 else (0, 0)
        frac = min(max(frac, 0), self._frac_max)
        wirelen = min(max(rec.wirelen, len(data)), 0xFFFFFFFF) if unchanged else len(data)
        try:
            self._f.write(struct.pack("<IIII", sec, frac, len(data), wirelen))
            self._f.write(data)
        except OSError as exc:
            raise DecryptError(f"cannot write the output: {exc.strerror or exc}") from None
        self._summary.written += 1
