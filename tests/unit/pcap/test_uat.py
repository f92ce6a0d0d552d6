"""Key file formats: Wireshark esp_sa (read + write), ikev2_decryption_table (write), MACsec JSON."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig
from ipsecemu.pcap.keyfile import KeyFileError
from ipsecemu.pcap.macsec_sa import format_macsec_sa, parse_macsec_sa, read_macsec_sa
from ipsecemu.pcap.uat import (
    ESP_AUTHENTICATION,
    ESP_ENCRYPTION,
    IKE_ENCRYPTION,
    IKE_INTEGRITY,
    IkeSaRow,
    esp_row,
    format_esp_sa,
    format_ikev2_table,
    parse_esp_sa,
    read_esp_sa,
    split_uat_line,
    write_esp_sa,
)

GCM_LINE = ('"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-GCM with 16 octet ICV [RFC4106]",'
            '"0x' + "11" * 16 + "cafebabe" + '","NULL",""')
CBC_LINE = ('"IPv6","2001:db8::1","*","0x00001000","AES-CBC [RFC3602]","0x' + "22" * 32 + '",'
            '"HMAC-SHA-256-128 [RFC4868]","0x' + "33" * 32 + '"')
LIBWIRESHARK = Path("/lib/x86_64-linux-gnu/libwireshark.so.16")


def test_parse_gcm_and_cbc_rows() -> None:
    rows = parse_esp_sa(f"# comment\n\n{GCM_LINE}\n{CBC_LINE}\n")
    gcm, cbc = rows
    assert (gcm.protocol, gcm.src, gcm.dst, gcm.spi, gcm.line) == ("IPv4", "192.0.2.1", "192.0.2.2", "0x0000abcd", 3)
    assert gcm.enc_key == bytes.fromhex("11" * 16 + "cafebabe")
    alg = gcm.algorithm()
    assert alg is not None and (alg.encr, alg.integ, alg.icv_len, alg.verify) == ("aes-gcm-16", None, 16, True)
    assert gcm.matches(4, "192.0.2.1", "192.0.2.2", 0xABCD)
    assert not gcm.matches(4, "192.0.2.1", "192.0.2.2", 0xABCE)
    assert not gcm.matches(4, "192.0.2.9", "192.0.2.2", 0xABCD)
    assert not gcm.matches(6, "192.0.2.1", "192.0.2.2", 0xABCD)
    alg = cbc.algorithm()
    assert alg is not None and (alg.encr, alg.integ, alg.icv_len) == ("aes-cbc", "hmac-sha256-128", 16)
    assert cbc.auth_key == b"\x33" * 32
    assert cbc.matches(6, "2001:db8:0::1", "2001:db8::99", 0x1000)  # "*" and canonical forms


@pytest.mark.parametrize(("pattern", "addr", "ok"), [
    ("*", "10.1.2.3", True), ("10.1.*.*", "10.1.2.3", True), ("10.1.*.*", "10.2.2.3", False),
    ("10.0.0.0/8", "10.9.9.9", True), ("10.0.0.0/8", "11.0.0.1", False), ("10.1.2.3", "10.1.2.3", True),
])
def test_address_wildcards(pattern: str, addr: str, ok: bool) -> None:
    row = parse_esp_sa(f'"IPv4","{pattern}","*","*","NULL","","NULL",""')[0]
    assert row.matches(4, addr, "1.1.1.1", 0x1234) is ok


def test_spi_decimal_and_wildcard() -> None:
    dec = parse_esp_sa('"IPv4","*","*","4660","NULL","","NULL",""')[0]
    assert dec.spi_matches(0x1234) and not dec.spi_matches(0x1235)
    assert parse_esp_sa('"IPv4","*","*","*","NULL","","NULL",""')[0].spi_matches(0xDEADBEEF)


def test_unchecked_and_null_authentication() -> None:
    row = parse_esp_sa('"IPv4","*","*","*","TripleDES-CBC [RFC2451]","0x' + "44" * 24
                       + '","ANY 96 bit authentication [no checking]",""')[0]
    alg = row.algorithm()
    assert alg is not None and (alg.encr, alg.integ, alg.icv_len, alg.verify) == ("3des-cbc", None, 12, False)
    row = parse_esp_sa('"IPv4","*","*","*","AES-CBC [RFC3602]","0x' + "44" * 16 + '","NULL",""')[0]
    alg = row.algorithm()
    assert alg is not None and (alg.icv_len, alg.verify) == (0, False)


def test_unsupported_algorithm_is_parsed_but_flagged() -> None:
    row = parse_esp_sa('"IPv4","*","*","*","AES-CTR [RFC3686]","0x' + "00" * 20 + '","NULL",""')[0]
    assert row.algorithm() is None
    assert "AES-CTR" in (row.unsupported_reason() or "")


def test_ascii_and_odd_hex_keys() -> None:
    row = parse_esp_sa('"IPv4","*","*","*","AES-CBC [RFC3602]","0123456789abcdef","NULL",""')[0]
    assert row.enc_key == b"0123456789abcdef"  # no 0x: Wireshark takes the text as the key
    key = "1" + "00" * 15  # 31 hex digits: a leading 0 is implied
    row = parse_esp_sa(f'"IPv4","*","*","*","AES-CBC [RFC3602]","0x{key}","NULL",""')[0]
    assert row.enc_key == bytes.fromhex("0" + key)


@pytest.mark.parametrize(("text", "needle"), [
    ('"IPv4","*","*","*","NULL","","NULL"', "expected 8 fields"),
    ('"IPv5","*","*","*","NULL","","NULL",""', 'line 2: protocol must be "IPv4" or "IPv6"'),
    ('"IPv4","300.1.1.1","*","*","NULL","","NULL",""', "bad IPv4 address"),
    ('"IPv4","*","*","0xZZ","NULL","","NULL",""', "bad SPI"),
    ('"IPv4","*","*","*","AES-GCM-128","0x00","NULL",""', "unknown encryption algorithm 'AES-GCM-128'"),
    ('"IPv4","*","*","*","NULL","","HMAC-SHA1",""', "unknown authentication algorithm"),
    ('"IPv4","*","*","*","AES-CBC [RFC3602]","0xGG","NULL",""', "bad hex in key"),
    ('"IPv4","*","*","*","AES-CBC [RFC3602]","0x0011","NULL",""', "needs a 16 or 24 or 32-byte key"),
    ('"IPv4","*","*","*","AES-GCM with 16 octet ICV [RFC4106]","0x' + "00" * 16 + '","NULL",""', "key + 4-byte salt"),
    ('"IPv4","*","*","*","AES-CBC [RFC3602]","0x' + "00" * 16 + '","HMAC-SHA-1-96 [RFC2404]","0x00"',
     "needs a 20-byte key"),
    ('"IPv4","*,"*"', "line 2"),
])
def test_malformed_lines_name_the_line(text: str, needle: str) -> None:
    with pytest.raises(KeyFileError) as exc:
        parse_esp_sa("# header\n" + text + "\n", "keys.txt")
    assert needle in str(exc.value)
    assert "keys.txt, line 2" in str(exc.value)


def test_errors_do_not_leak_keys() -> None:
    secret = "ab" * 16
    with pytest.raises(KeyFileError) as exc:
        parse_esp_sa(f'"IPv4","*","*","*","AES-GCM with 16 octet ICV [RFC4106]","0x{secret}","NULL",""')
    assert secret not in str(exc.value)
    row = parse_esp_sa(f'"IPv4","*","*","*","AES-CBC [RFC3602]","0x{secret}","NULL",""')[0]
    assert secret not in repr(row)


def test_write_read_round_trip_and_mode(tmp_path: Path) -> None:
    rows = parse_esp_sa(f"{GCM_LINE}\n{CBC_LINE}\n")
    path = tmp_path / "keys" / "esp_sa"
    write_esp_sa(path, rows)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = read_esp_sa(path)
    assert [(r.protocol, r.src, r.dst, r.spi, r.encryption, r.enc_key, r.authentication, r.auth_key) for r in again] \
        == [(r.protocol, r.src, r.dst, r.spi, r.encryption, r.enc_key, r.authentication, r.auth_key) for r in rows]
    # exactly Wireshark's layout: quoted fields, comma separated, one record per line
    assert format_esp_sa(rows).splitlines()[1] == GCM_LINE


def test_quoting_escapes() -> None:
    assert split_uat_line(r'"a\x22b","c\\d", e ,""', "x") == ['a"b', "c\\d", "e", ""]
    rows = parse_esp_sa('"IPv4","*","*","*","AES-CBC [RFC3602]","ab\\x22cdefghijklmno","NULL",""')
    assert rows[0].enc_key == b'ab"cdefghijklmno'
    assert '"0x6162226364' in format_esp_sa(rows)  # written back as hex, which tshark reads the same


def test_esp_row_from_dataplane_names() -> None:
    r = esp_row("192.0.2.1", "192.0.2.2", 0xABCD, "aes-gcm-16", bytes(20))
    assert format_esp_sa([r]).splitlines()[1] == (
        '"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-GCM with 16 octet ICV [RFC4106]","0x' + "00" * 20
        + '","NULL",""')
    r = esp_row("2001:db8::1", "2001:db8::2", 0x1000, "aes-cbc", bytes(32), "hmac-sha256-128", bytes(32))
    assert (r.protocol, r.authentication) == ("IPv6", "HMAC-SHA-256-128 [RFC4868]")
    r = esp_row("10.0.0.1", "10.0.0.2", 0x1000, "3des-cbc", bytes(24), None, verify_icv=False, icv_len=12)
    assert r.authentication == "ANY 96 bit authentication [no checking]"
    with pytest.raises(ConfigError):
        esp_row("10.0.0.1", "10.0.0.2", 0x1000, "rot13", b"")


@pytest.mark.skipif(not LIBWIRESHARK.exists(), reason="libwireshark 4.0 not installed")
def test_algorithm_strings_exist_in_libwireshark() -> None:
    """Every string we write for tshark 4.0 is one libwireshark itself contains."""
    blob = LIBWIRESHARK.read_bytes()
    wanted = [k for k, v in ESP_ENCRYPTION.items() if v and "ChaCha20" not in k] + list(ESP_AUTHENTICATION)
    wanted += list(IKE_ENCRYPTION.values()) + list(IKE_INTEGRITY.values())
    missing = [w for w in wanted if w != "NULL" and b"\0" + w.encode() + b"\0" not in blob]
    assert not missing


def test_ikev2_table_format() -> None:
    row = IkeSaRow(bytes.fromhex("0001020304050607"), bytes.fromhex("c02e7a3031a03188"), b"\x01" * 16, b"\x02" * 16,
                   "aes128", b"\x03" * 20, b"\x04" * 20, "sha1")
    line = format_ikev2_table([row]).splitlines()[1]
    # byte fields bare hex (tshark rejects quoted SPIs), algorithm names quoted
    assert line == ("0001020304050607,c02e7a3031a03188," + "01" * 16 + "," + "02" * 16
                    + ',"AES-CBC-128 [RFC3602]",' + "03" * 20 + "," + "04" * 20 + ',"HMAC_SHA1_96 [RFC2404]"')
    with pytest.raises(ConfigError):
        format_ikev2_table([IkeSaRow(b"\0" * 8, b"\0" * 8, b"", b"", "rot13", b"", b"", "sha1")])


def test_macsec_json_round_trip(tmp_path: Path) -> None:
    text = json.dumps([
        {"sci": "001122334455" + "0001", "an": 0, "cipher": "gcm-aes-128", "sak": "00" * 16},
        {"sci": "0011223344550002", "an": 3, "cipher": "GCM-AES-XPN-256", "sak": "11" * 32,
         "ssci": "00000002", "salt": "22" * 12},
    ])
    sas = parse_macsec_sa(text)
    assert sas[0] == MacsecSaConfig("gcm-aes-128", bytes(16), bytes.fromhex("0011223344550001"), 0)
    assert sas[1].xpn and sas[1].ssci == 2 and sas[1].salt == b"\x22" * 12 and sas[1].an == 3
    path = tmp_path / "macsec.json"
    path.write_text(format_macsec_sa(sas))
    assert read_macsec_sa(path) == sas


@pytest.mark.parametrize(("obj", "needle"), [
    ({"sci": "0011", "an": 0, "cipher": "gcm-aes-128", "sak": "00" * 16}, "'sci' must be 16 hex digits"),
    ({"sci": "00" * 8, "an": 4, "cipher": "gcm-aes-128", "sak": "00" * 16}, "'an' must be an integer 0..3"),
    ({"sci": "00" * 8, "an": 0, "cipher": "gcm-aes-512", "sak": "00" * 16}, "unknown MACsec cipher"),
    ({"sci": "00" * 8, "an": 0, "cipher": "gcm-aes-128", "sak": "zz"}, "'sak' is not valid hex"),
    ({"sci": "00" * 8, "an": 0, "cipher": "gcm-aes-xpn-128", "sak": "00" * 16}, "needs a 32-bit ssci"),
    ({"sci": "00" * 8, "an": 0, "cipher": "gcm-aes-128", "sak": "00" * 16, "key": 1}, "unknown field(s) key"),
])
def test_macsec_json_errors(obj: dict, needle: str) -> None:
    with pytest.raises(KeyFileError) as exc:
        parse_macsec_sa(json.dumps([obj]), "m.json")
    assert needle in str(exc.value) and "m.json[0]" in str(exc.value)


def test_macsec_json_not_json() -> None:
    with pytest.raises(KeyFileError, match="not valid JSON"):
        parse_macsec_sa("[{", "m.json")


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="esp_sa file not found"):
        read_esp_sa(tmp_path / "nope")
