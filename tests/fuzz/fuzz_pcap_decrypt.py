"""Atheris target: ``pcap decrypt`` (``ipsecemu.pcap.decrypt.decrypt_file``) on a capture file
holding the fuzz input, with real keys for the ESP (AES-GCM, AES-CBC + HMAC-SHA256) and MACsec
(GCM-AES-128) SAs the seed captures use.

Documented outcome: a ``Summary`` or ``DecryptError`` (input not a capture).  Invariants of a
summary: every frame read is counted once (decrypted + passed + failed + TFC dummies), the output
file holds exactly ``decrypted + passed`` records, and ``written`` says so.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main  # noqa: E402

from ipsecemu.base.satypes import EspSaConfig, MacsecSaConfig, SecYConfig, Verdict  # noqa: E402
from ipsecemu.dataplane import backend  # noqa: E402
from ipsecemu.esp import framing  # noqa: E402
from ipsecemu.pcap.decrypt import decrypt_file  # noqa: E402
from ipsecemu.pcap.pcapfile import DecryptError, read_capture  # noqa: E402
from ipsecemu.pcap.uat import esp_row  # noqa: E402

OUTER = ("192.0.2.1", "192.0.2.2")
ESP_SAS = [
    EspSaConfig(0x1000, "aes-gcm-16", bytes(range(16)) + b"\xca\xfe\xba\xbe", replay_window=0),
    EspSaConfig(0x2000, "aes-cbc", bytes(range(32)), "hmac-sha256-128", bytes(range(100, 132)), replay_window=0),
]
ROWS = [esp_row(*OUTER, c.spi, c.encr, c.enc_key, c.integ, c.integ_key) for c in ESP_SAS]
MACSEC_SA = MacsecSaConfig(cipher="gcm-aes-128", sak=bytes(range(1, 17)), sci=bytes.fromhex("020000000a0a0005"), an=2)
MAC_A, MAC_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")

_DIR = tempfile.mkdtemp(prefix="fuzz-pcap-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
IN, OUT = os.path.join(_DIR, "in.pcap"), os.path.join(_DIR, "out.pcap")


def seed_frames() -> list[bytes]:
    """Ethernet frames: ESP tunnel (both SAs), UDP-encapsulated ESP, MACsec, plain."""
    be = backend("reference")
    inner = framing.build_ipv4("10.1.0.1", "10.2.0.1", 17, framing.build_udp(1000, 53, b"q" * 20))
    eth = MAC_B + MAC_A + b"\x08\x00"
    frames = []
    for cfg in ESP_SAS:
        verdict, esp = be.EspOutbound(cfg).encap(inner, framing.inner_next_header(inner))
        assert verdict == Verdict.OK
        frames.append(eth + framing.build_ipv4(*OUTER, 50, esp))
        frames.append(eth + framing.build_ipv4(*OUTER, 17, framing.build_udp(4500, 4500, esp)))
    verdict, wire = be.MacsecTx(SecYConfig(include_sci=True), MACSEC_SA).protect(eth + inner)
    assert verdict == Verdict.OK
    frames.append(wire)
    frames.append(eth + inner)
    return frames


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    with open(IN, "wb") as f:
        f.write(data)
    try:
        s = decrypt_file(IN, OUT, ROWS, [MACSEC_SA], backend="auto")
    except DecryptError:
        return
    counted = s.decrypted + s.passed + s.failed + s.dummy
    if counted != s.frames:
        raise AssertionError(f"frames read {s.frames} != decrypted+passed+failed+dummies {counted}")
    if s.written != s.decrypted + s.passed:
        raise AssertionError(f"written {s.written} != decrypted {s.decrypted} + passed {s.passed}")
    _lt, _nano, records = read_capture(OUT)
    n = sum(1 for _ in records)
    if n != s.written:
        raise AssertionError(f"output holds {n} records, summary says {s.written}")
    if len(s.failures) != s.failed:
        raise AssertionError("failures listed != failed count")


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
