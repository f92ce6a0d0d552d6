"""SA-state rendering for ``sa list`` (text like swanctl --list-sas, and JSON)."""

from __future__ import annotations

import json

from ipsecemu.ike.render import normalize, render_json, render_text

OURS = [{
    "name": "azure-er", "uniqueid": 1, "state": "ESTABLISHED", "initiator": True,
    "initiator_spi": 0x5B0A3C2E1D0F9A8B, "responder_spi": "7c6d5e4f3a2b1c0d",
    "local_host": "172.24.127.211", "local_port": 4500, "local_id": "onprem.example.com",
    "remote_host": "10.51.230.4", "remote_port": 4500, "remote_id": "10.51.230.4",
    "proposal": "aes256-sha256-modp2048", "established": 120, "rekey_time": 25000,
    "child_sas": [{
        "name": "net", "uniqueid": 2, "reqid": 1, "state": "INSTALLED", "mode": "tunnel", "encap": True,
        "protocol": "esp", "spi_in": 0xC1A2B3C4, "spi_out": b"\x00\xd6\xe7\xf8",
        "proposal": "aes256gcm16-modp2048-esn", "bytes_in": 1234, "packets_in": 10, "use_in": 5,
        "bytes_out": 5678, "packets_out": 12, "install_time": 120, "rekey_time": 3000, "life_time": 3480,
        "local_ts": ["10.2.27.0/25"], "remote_ts": ["10.51.230.0/24", "10.51.231.0/24"],
    }],
}]

EXPECTED = """\
azure-er: #1, ESTABLISHED, IKEv2, 5b0a3c2e1d0f9a8b_i* 7c6d5e4f3a2b1c0d_r
  local  'onprem.example.com' @ 172.24.127.211[4500]
  remote '10.51.230.4' @ 10.51.230.4[4500]
  AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048
  established 120s ago, rekeying in 25000s
  net: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256/MODP_2048/ESN
    installed 120s ago, rekeying in 3000s, expires in 3480s
    in  c1a2b3c4,   1234 bytes,    10 packets,     5s ago
    out 00d6e7f8,   5678 bytes,    12 packets
    local  10.2.27.0/25
    remote 10.51.230.0/24 10.51.231.0/24
"""


def test_text_view() -> None:
    assert render_text(OURS) == EXPECTED


def test_responder_marks_its_own_spi_and_transport_without_encap() -> None:
    sa = {**OURS[0], "initiator": "no", "child_sas": [{**OURS[0]["child_sas"][0], "mode": "TRANSPORT",
                                                        "encap": False}]}
    text = render_text([sa])
    assert "5b0a3c2e1d0f9a8b_i 7c6d5e4f3a2b1c0d_r*" in text
    assert ", TRANSPORT, ESP:" in text


def test_json_view_is_normalized_and_keeps_the_proposal() -> None:
    data = json.loads(render_json(OURS))
    ike = data[0]
    assert ike["initiator_spi"] == "5b0a3c2e1d0f9a8b" and ike["proposal"] == "aes256-sha256-modp2048"
    assert (ike["encr_alg"], ike["encr_keysize"], ike["prf_alg"]) == ("AES_CBC", 256, "PRF_HMAC_SHA2_256")
    ch = ike["child_sas"][0]
    assert (ch["spi_in"], ch["spi_out"], ch["esn"], ch["bytes_in"]) == ("c1a2b3c4", "00d6e7f8", True, 1234)
    assert ch["remote_ts"] == ["10.51.230.0/24", "10.51.231.0/24"]


def test_vici_style_input_renders_the_same() -> None:
    """strongSwan's vici list-sas shape (hyphen keys, strings, children keyed name-uniqueid)."""
    vici = {"azure-er": {
        "uniqueid": "1", "version": "2", "state": "ESTABLISHED", "local-host": "172.24.127.211",
        "local-port": "4500", "local-id": "onprem.example.com", "remote-host": "10.51.230.4",
        "remote-port": "4500", "remote-id": "10.51.230.4", "initiator": "yes",
        "initiator-spi": "5b0a3c2e1d0f9a8b", "responder-spi": "7c6d5e4f3a2b1c0d",
        "encr-alg": "AES_CBC", "encr-keysize": "256", "integ-alg": "HMAC_SHA2_256_128",
        "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "MODP_2048", "established": "120", "rekey-time": "25000",
        "child-sas": {"net-2": {
            "name": "net", "uniqueid": "2", "reqid": "1", "state": "INSTALLED", "mode": "TUNNEL",
            "protocol": "ESP", "encap": "yes", "spi-in": "c1a2b3c4", "spi-out": "00d6e7f8",
            "encr-alg": "AES_GCM_16", "encr-keysize": "256", "dh-group": "MODP_2048", "esn": "1",
            "bytes-in": "1234", "packets-in": "10", "use-in": "5", "bytes-out": "5678", "packets-out": "12",
            "rekey-time": "3000", "life-time": "3480", "install-time": "120",
            "local-ts": ["10.2.27.0/25"], "remote-ts": ["10.51.230.0/24", "10.51.231.0/24"],
        }},
    }}
    assert render_text(vici) == EXPECTED
    assert render_text(list(vici.items())) == EXPECTED


def test_odd_input_does_not_crash() -> None:
    assert render_text([]) == ""
    text = render_text([{"name": "x", "proposal": "not-a-proposal", "child_sas": {}}])
    assert text.startswith("x: #, , IKEv2, _i _r*") and "not-a-proposal" in text
    assert normalize([{"name": "y", "uniqueid": "abc"}])[0]["uniqueid"] == "abc"
