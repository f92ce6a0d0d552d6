"""The strongSwan glue without charon: the Conn model and the key-log parser, and key files written
through the one Wireshark writer (ipsecemu.pcap.uat)."""

from __future__ import annotations

import pytest

from ipsecemu.base.satypes import ESP_ENCR, ESP_INTEG
from ipsecemu.pcap.uat import parse_esp_sa
from ipsecemu.strongswan.conn import Child, Conn
from ipsecemu.strongswan.keylog import (
    CHARON_ENCR,
    CHARON_INTEG,
    esp_rows,
    ike_algorithms,
    ike_rows,
    parse_keys,
    wireshark_esp_sa,
    wireshark_ikev2,
)


def test_swanctl_conf_never_shows_the_psk() -> None:
    conn = Conn(name="c1", local_addrs=("192.0.2.1",), remote_addrs=("192.0.2.2",), psk="s3cret-psk",
                proposals=("aes256-sha256-modp2048",),
                children=(Child(local_ts=("10.1.0.0/24",), remote_ts=("10.2.0.0/24",),
                                esp_proposals=("aes256-sha256",)),))
    text = conn.swanctl_conf()
    assert "s3cret-psk" not in text
    assert "proposals = aes256-sha256-modp2048" in text
    assert "local_ts = 10.1.0.0/24" in text and "esp_proposals = aes256-sha256" in text
    msg = conn.vici()["c1"]
    assert msg["children"]["net"]["remote_ts"] == ["10.2.0.0/24"]
    assert msg["local"] == {"auth": "psk", "id": "%any"}


SAMPLE_LOG = """\
03:11:33.012 14[ENC] <pair|7> parsed IKE_SA_INIT response 0 [ SA KE No ]
03:11:33.012 14[IKE] <7> Sk_ei secret => 20 bytes @ 0x7f2d6800b5a0
03:11:33.012 14[IKE] <7>    0: EC 48 77 30 57 D3 C0 F8 D6 63 1E 0E 58 5B F2 2A  .Hw0W....c..X[.*
03:11:33.012 14[IKE] <7>   16: 84 F3 37 76                                      ..7v
03:11:33.014 09[ENC] <pair|7> parsed IKE_AUTH request 1 [ IDi AUTH SA TSi TSr ]
03:11:33.015 09[CHD] <pair|7> encryption initiator key => 4 bytes @ 0x7f2d74030490
03:11:33.015 09[CHD] <pair|7>    0: 15 11 54 CC                                      ..T.
03:11:33.015 09[CHD] <pair|7> encryption responder key => 4 bytes @ 0x7f2d740304b0
03:11:33.015 09[CHD] <pair|7>    0: 40 4A 5D 82                                      @J].
03:11:33.015 09[CHD] <pair|7> adding inbound ESP SA
03:11:33.015 09[CHD] <pair|7>   SPI 0xb7ba54c7, src 192.0.2.2 dst 192.0.2.1
03:11:33.015 09[CHD] <pair|7> adding outbound ESP SA
03:11:33.015 09[CHD] <pair|7>   SPI 0x9058488c, src 192.0.2.1 dst 192.0.2.2
"""


def test_parse_keys_responder_directions() -> None:
    # This charon parsed the IKE_AUTH *request*: it is the responder, so its inbound SA
    # uses the initiator's key and its outbound SA the responder's.
    kl = parse_keys(SAMPLE_LOG)
    assert kl.ike == [{"uid": "7", "sk_ei": "ec48773057d3c0f8d6631e0e585bf22a84f33776"}]
    assert kl.esp == [
        {"uid": "7", "spi": "b7ba54c7", "src": "192.0.2.2", "dst": "192.0.2.1", "enc": "151154cc", "integ": ""},
        {"uid": "7", "spi": "9058488c", "src": "192.0.2.1", "dst": "192.0.2.2", "enc": "404a5d82", "integ": ""},
    ]
    uat = wireshark_esp_sa(kl.esp)
    assert '"IPv4","192.0.2.2","192.0.2.1","0xb7ba54c7","AES-GCM with 16 octet ICV [RFC4106]","0x151154cc"' in uat


def test_esp_file_reads_back_through_uat() -> None:
    rows = [{**r, "enc": "11" * 16, "integ": "22" * 32} for r in parse_keys(SAMPLE_LOG).esp]
    text = wireshark_esp_sa(rows, "AES_CBC", "HMAC_SHA2_256_128")
    back = parse_esp_sa(text)
    assert [(r.spi, r.encryption, r.authentication) for r in back] == [
        ("0xb7ba54c7", "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
        ("0x9058488c", "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]")]
    assert back[0].enc_key == b"\x11" * 16 and back[1].auth_key == b"\x22" * 32
    assert esp_rows(rows, "AES_CTR") == []  # no data-plane name: not written


def test_ikev2_table_rows_need_spis() -> None:
    row = {"uid": "1", "spi_i": "00" * 7 + "01", "spi_r": "00" * 7 + "02", "sk_ei": "aa" * 32, "sk_er": "bb" * 32,
           "sk_ai": "cc" * 32, "sk_ar": "dd" * 32}
    assert ike_rows([{"uid": "2", "sk_ei": "aa"}]) == []
    line = wireshark_ikev2([row]).splitlines()[-1]
    assert line.startswith("0000000000000001,0000000000000002," + "aa" * 32)
    assert line.endswith(',"HMAC_SHA2_256_128 [RFC4868]"') and '"AES-CBC-256 [RFC3602]"' in line


@pytest.mark.parametrize(("sa", "want"), [
    ({"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA1_96"},
     ("AES-CBC-128 [RFC3602]", "HMAC_SHA1_96 [RFC2404]")),
    ({"encr-alg": "AES_GCM_16", "encr-keysize": "256"}, ("AES-GCM-256 with 16 octet ICV [RFC5282]", "NONE [RFC4306]")),
    ({"encr-alg": "CAMELLIA_CBC"}, None),
])
def test_ike_algorithms(sa: dict, want: tuple[str, str] | None) -> None:
    assert ike_algorithms(sa) == want


def test_charon_names_are_views_of_the_registry() -> None:
    assert set(CHARON_ENCR.values()) <= set(ESP_ENCR) and set(CHARON_INTEG.values()) <= set(ESP_INTEG)
    assert CHARON_ENCR["AES_GCM_16"] == "aes-gcm-16" and CHARON_INTEG["HMAC_SHA2_256_128"] == "hmac-sha256-128"
    # tshark's strings by key size; 3DES has no key-size attribute; ChaCha20 tshark 4.0 cannot decrypt
    assert ike_algorithms({"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA1_96"}) == (
        "AES-CBC-128 [RFC3602]", "HMAC_SHA1_96 [RFC2404]")
    assert ike_algorithms({"encr-alg": "3DES_CBC", "integ-alg": "HMAC_SHA2_256_128"}) == (
        "3DES [RFC2451]", "HMAC_SHA2_256_128 [RFC4868]")
    assert ike_algorithms({"encr-alg": "CHACHA20_POLY1305", "encr-keysize": "256"}) is None
