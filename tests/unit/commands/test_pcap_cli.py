"""`ipsecemu pcap decrypt` user errors: a clear message and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.cli import cli

from support.paths import VECTORS

CAPTURE = VECTORS / "captures" / "02-sunrise-sunset-esp.pcap"
GOOD = ('"IPv4","*","192.1.2.45","0x12345678","TripleDES-CBC [RFC2451]",'
        '"0x4043434545464649494a4a4c4c4f4f515152525454575758","ANY 96 bit authentication [no checking]",""\n')


def invoke(*args: str):
    return CliRunner().invoke(cli, ["pcap", "decrypt", *args])


def assert_clean_error(result, needle: str, code: int = 3) -> None:  # InputError
    assert result.exit_code == code, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # no exception escaped the command


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    p = tmp_path / "esp_sa"
    p.write_text(GOOD)
    return p


def test_missing_capture(tmp_path: Path, keys: Path) -> None:
    assert_clean_error(invoke(str(tmp_path / "nope.pcap"), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(keys)),
                       "input file not found")


def test_missing_key_file(tmp_path: Path) -> None:
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(tmp_path / "k")),
                       "esp_sa file not found")


def test_not_a_pcap(tmp_path: Path, keys: Path) -> None:
    bogus = tmp_path / "x.pcap"
    bogus.write_text("hello, I am not a capture\n")
    assert_clean_error(invoke(str(bogus), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(keys)),
                       "not a pcap or pcapng capture")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert_clean_error(invoke(str(empty), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(keys)),
                       "not a pcap or pcapng capture")


def test_malformed_line_named(tmp_path: Path) -> None:
    k = tmp_path / "esp_sa"
    k.write_text(GOOD + '"IPv4","*","*","0x1","AES-CBC [RFC3602]","0xZZ","NULL",""\n')
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(k)),
                       "line 2: bad hex in key")


def test_unknown_algorithm(tmp_path: Path) -> None:
    k = tmp_path / "esp_sa"
    k.write_text(GOOD.replace("TripleDES-CBC [RFC2451]", "3DES"))
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(k)),
                       "line 1: unknown encryption algorithm '3DES'")


def test_bad_macsec_json(tmp_path: Path) -> None:
    k = tmp_path / "m.json"
    k.write_text('[{"sci": "00", "an": 0, "cipher": "gcm-aes-128", "sak": "00"}]')
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap"), "--macsec-sa", str(k)),
                       "'sci' must be 16 hex digits")


def test_no_keys_at_all(tmp_path: Path) -> None:
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap")), "give --esp-sa and/or --macsec-sa", code=2)


def test_unwritable_output(tmp_path: Path, keys: Path) -> None:
    assert_clean_error(invoke(str(CAPTURE), "-o", str(tmp_path / "no" / "dir" / "o.pcap"), "--esp-sa", str(keys)),
                       "cannot write")


def test_unsupported_algorithm_row_is_skipped_with_warning(tmp_path: Path) -> None:
    k = tmp_path / "esp_sa"
    k.write_text('"IPv4","*","*","*","AES-CTR [RFC3686]","0x' + "00" * 20 + '","NULL",""\n' + GOOD)
    result = invoke(str(CAPTURE), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(k))
    assert result.exit_code == 0, result.output
    assert "warning: line 1: encryption 'AES-CTR [RFC3686]' is not supported by ipsecemu; row ignored" in result.output
    assert "decrypted: 8" in result.output


def test_truncated_capture_keeps_what_was_read(tmp_path: Path, keys: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(CAPTURE.read_bytes()[:-40])
    result = invoke(str(cut), "-o", str(tmp_path / "o.pcap"), "--esp-sa", str(keys))
    assert "Traceback" not in result.output
    assert "frames read: 7" in result.output or "frames read: 8" in result.output


def test_real_entry_point_subprocess(tmp_path: Path, keys: Path) -> None:
    """The installed command, end to end, in a real process."""
    out = tmp_path / "o.pcap"
    proc = subprocess.run([sys.executable, "-m", "ipsecemu", "pcap", "decrypt", str(CAPTURE), "-o", str(out),
                           "--esp-sa", str(keys)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("failed: 0, passed through: 0")
    assert out.stat().st_size > 24
    bad = subprocess.run([sys.executable, "-m", "ipsecemu", "pcap", "decrypt", str(tmp_path / "none"), "-o",
                          str(out), "--esp-sa", str(keys)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and "Traceback" not in bad.stderr and "input file not found" in bad.stderr
