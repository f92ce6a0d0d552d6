"""pcap.uat's writers fed from a charon key log (the rows lab capture and the strongSwan glue export)."""

from __future__ import annotations

import pytest

from ipsecemu.base.errors import ConfigError, InputError
from ipsecemu.pcap.uat import (
    esp_rows_from_keylog,
    format_esp_sa,
    format_ikev2_table,
    ike_rows_from_keylog,
    parse_esp_sa,
)

ESP_ROW = {"src": "10.1.0.1", "dst": "10.2.0.1", "spi": "c0ffee01", "enc": "01" * 20, "integ": ""}


def test_esp_gcm_row_reads_back() -> None:
    text = format_esp_sa(esp_rows_from_keylog([ESP_ROW], "AES_GCM_16"))
    (row,) = parse_esp_sa(text, "esp_sa")
    assert row.encryption == "AES-GCM with 16 octet ICV [RFC4106]" and row.authentication == "NULL"
    assert row.spi_matches(0xC0FFEE01) and row.enc_key == b"\x01" * 20
    alg = row.algorithm()
    assert alg is not None and (alg.encr, alg.integ, alg.icv_len) == ("aes-gcm-16", None, 16)


def test_esp_cbc_hmac_and_ipv6() -> None:
    r6 = {"src": "fd00::1", "dst": "fd00::2", "spi": "00001000", "enc": "02" * 32, "integ": "03" * 32}
    (row,) = parse_esp_sa(format_esp_sa(esp_rows_from_keylog([r6], "AES_CBC", "HMAC_SHA2_256_128")), "x")
    assert row.protocol == "IPv6" and row.authentication == "HMAC-SHA-256-128 [RFC4868]"
    assert row.auth_key == b"\x03" * 32
    alg = row.algorithm()
    assert alg is not None and (alg.encr, alg.integ) == ("aes-cbc", "hmac-sha256-128")


def test_esp_escaping() -> None:
    """Fields are quoted and escaped: a quote in an address cannot break the UAT line."""
    bad = dict(ESP_ROW, src='10.1.0.1","x')
    line = format_esp_sa(esp_rows_from_keylog([bad], "AES_GCM_16")).splitlines()[1]
    assert '\\x22' in line and line.count('","') == 7


def test_ike_rows() -> None:
    rows = [{"spi_i": "00" * 8, "spi_r": "11" * 8, "sk_ei": "22" * 32, "sk_er": "33" * 32,
             "sk_ai": "44" * 32, "sk_ar": "55" * 32}, {"uid": "2"}]
    (line,) = format_ikev2_table(ike_rows_from_keylog(rows, "AES_CBC", "HMAC_SHA2_256_128", 256)).splitlines()[1:]
    assert line.endswith('"HMAC_SHA2_256_128 [RFC4868]"') and '"AES-CBC-256 [RFC3602]"' in line
    gcm = format_ikev2_table(ike_rows_from_keylog(rows[:1], "AES_GCM_16", "", 128))
    assert '"AES-GCM-128 with 16 octet ICV [RFC5282]"' in gcm and '"NONE [RFC4306]"' in gcm


def test_unknown_names_and_bad_hex() -> None:
    with pytest.raises(ConfigError):
        esp_rows_from_keylog([ESP_ROW], "ROT13")
    with pytest.raises(ConfigError):
        esp_rows_from_keylog([ESP_ROW], "AES_CBC", "HMAC_WHIRLPOOL")
    with pytest.raises(ConfigError):
        ike_rows_from_keylog([], "CHACHA20_POLY1305")  # tshark 4.0 has no IKEv2 name for it
    with pytest.raises(InputError):
        esp_rows_from_keylog([dict(ESP_ROW, enc="zz")], "AES_GCM_16")
