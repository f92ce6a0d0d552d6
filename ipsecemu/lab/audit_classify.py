"""Verdicts of ``lab audit`` from captured packets only (never from the tool's idea of its state).

Each audited flow carries a random marker in its payload.  For every frame of a capture taken on an
untrusted link: the marker in the raw bytes means it crossed that link in clear; the marker only
after decrypting the frame with the lab's exported keys (ESP, ESP-in-UDP, MACsec, nested) means an
encrypted layer carried it -- proven, not assumed.  Frames of an SA without a key prove nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipsecemu.base.satypes import MacsecSaConfig
from ipsecemu.pcap.coalesced import split_coalesced as split_coalesced  # one splitter (moved to pcap/)
from ipsecemu.pcap.decrypt import CaptureDecryptor
from ipsecemu.pcap.pcapfile import read_capture
from ipsecemu.pcap.uat import EspSaRow

# Observed verdicts (the first three are also the expectations a lab file may declare)
ENCRYPTED, CLEAR, BLOCKED = "encrypted", "clear", "blocked"
NOT_DELIVERED = "not delivered"  # carried encrypted over an untrusted link, yet no answer came back
NOT_OBSERVED = "not observed"  # delivered, but never seen on an untrusted link (nothing proven)


@dataclass
class LinkEvidence:
    """Frames of one capture that carried a marker."""

    clear: int = 0  # marker in the raw frame
    encrypted: int = 0  # marker only after removing ESP/MACsec layers

    def as_dict(self) -> dict[str, int]:
        return {"clear": self.clear, "encrypted": self.encrypted}


@dataclass
class CaptureStats:
    frames: int = 0
    decrypted: int = 0
    failed: int = 0
    no_key: int = 0
    coalesced: int = 0  # frames holding several ESP-in-UDP datagrams (UDP GSO/GRO), split and decrypted
    hits: dict[bytes, LinkEvidence] = field(default_factory=dict)


def scan_capture(path: str | Path, markers: Iterable[bytes], esp_rows: Sequence[EspSaRow] = (),
                 macsec_sas: Sequence[MacsecSaConfig] = ()) -> CaptureStats:
    """Count, per marker, the frames of ``path`` carrying it in clear and carrying it encrypted."""
    wanted = list(markers)
    stats = CaptureStats(hits={m: LinkEvidence() for m in wanted})
    linktype, _nano, records = read_capture(path)
    dec = CaptureDecryptor(esp_rows, macsec_sas)
    for n, rec in enumerate(records, 1):
        lt = rec.linktype if rec.linktype is not None else linktype
        out = dec.process(n, lt, rec.data)
        plain = [out] if out is not None and out is not rec.data else []
        if out is None:  # rejected: maybe several datagrams of a UDP GSO train / GRO merge in one frame
            parts = [dec.process(n, lt, p) for p in split_coalesced(rec.data, lt)]
            if parts and all(p is not None for p in parts):
                plain = [p for p in parts if p is not None]
                stats.coalesced += 1
        stats.failed += out is None and not plain
        for m in wanted:
            if m in rec.data:
                stats.hits[m].clear += 1
            elif any(m in p for p in plain):
                stats.hits[m].encrypted += 1
        stats.frames += 1
    s = dec.summary
    stats.decrypted, stats.no_key = s.decrypted, s.no_key  # a split frame's parts count one by one
    return stats


def verdict(delivered: bool, evidence: Iterable[LinkEvidence]) -> str:
    """The observed verdict of one flow from its evidence on every untrusted link."""
    ev = list(evidence)
    if any(e.clear for e in ev):
        return CLEAR  # the marker crossed an untrusted link in clear, whatever else happened
    seen_encrypted = any(e.encrypted for e in ev)
    if not delivered:
        return NOT_DELIVERED if seen_encrypted else BLOCKED
    return ENCRYPTED if seen_encrypted else NOT_OBSERVED
