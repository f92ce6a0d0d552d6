"""MACsec link config (Azure names) and the `macsec link` CLI without root: every mistake is a
one-line error naming the field, never a traceback; secrets never show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.base.errors import ConfigError
from ipsecemu.commands.macsec import macsec
from ipsecemu.config.macsec_link import LinkConfig, parse_link_config

CAK = "00112233445566778899aabbccddeeff"
BASE = {"cak": CAK, "ckn": "01"}


@pytest.mark.parametrize(("name", "cipher", "xpn"), [
    ("GcmAes128", "gcm-aes-128", False), ("GcmAes256", "gcm-aes-256", False),
    ("GcmAesXpn128", "gcm-aes-xpn-128", True), ("GcmAesXpn256", "gcm-aes-xpn-256", True),
    ("gcm-aes-xpn-256", "gcm-aes-xpn-256", True), ("GCM_AES_128", "gcm-aes-128", False),
])
def test_azure_and_ieee_cipher_names(name: str, cipher: str, xpn: bool) -> None:
    cfg = parse_link_config({**BASE, "cipher": name})
    assert cfg.cipher == cipher
    assert cfg.public()["cipher"].startswith("GcmAes") and ("Xpn" in cfg.public()["cipher"]) == xpn


def test_defaults_and_sci_state() -> None:
    cfg = parse_link_config(BASE)
    assert (cfg.cipher, cfg.include_sci, cfg.validate, cfg.replay_window, cfg.key_server_priority) == \
        ("gcm-aes-128", True, "strict", 0, 16)
    off = parse_link_config({**BASE, "sci_state": "Disabled", "replay_window": 64, "validate": "check"})
    secy = off.secy()
    assert (secy.include_sci, secy.end_station, secy.replay_window, secy.validate) == (False, True, 64, "check")
    assert parse_link_config({**BASE, "cak": CAK * 2, "ckn": "ab" * 32}).cak == bytes.fromhex(CAK * 2)
    assert parse_link_config({**BASE, "vlan": 100}).tag_bytes == 4
    assert parse_link_config({**BASE, "qinq": [10, 20]}).qinq == (10, 20)
    assert cfg.offload is True and parse_link_config({**BASE, "offload": False}).offload is False


@pytest.mark.parametrize(("patch", "field", "why"), [
    ({"cipher": "GcmAes192"}, "macsec.cipher", "unknown cipher"),
    ({"sci_state": "Maybe"}, "macsec.sci_state", "Enabled or Disabled"),
    ({"cak": CAK[:-2]}, "macsec.cak", "16 or 32 bytes"),
    ({"cak": "zz" * 16}, "macsec.cak", "not valid hex"),
    ({"cak": 1234}, "macsec.cak", "quoted hex"),
    ({"ckn": ""}, "macsec.ckn", "1-32 bytes"),
    ({"ckn": "00" * 33}, "macsec.ckn", "1-32 bytes"),
    ({"replay_window": 5000}, "macsec.replay_window", "0..4096"),
    ({"validate": "lax"}, "macsec.validate", "strict"),
    ({"key_server_priority": 256}, "macsec.key_server_priority", "0..255"),
    ({"vlan": 4095}, "macsec.vlan", "1..4094"),
    ({"qinq": [1]}, "macsec.qinq", "S-tag, C-tag"),
    ({"vlan": 5, "qinq": [1, 2]}, "macsec.vlan", "not both"),
    ({"hello_time": 6, "life_time": 2}, "macsec.life_time", "longer"),
    ({"colour": "red"}, "macsec.colour", "unknown key"),
    ({"offload": "yes"}, "macsec.offload", "true or false"),
])
def test_errors_name_the_field(patch: dict, field: str, why: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_link_config({**BASE, **patch})
    assert str(ei.value).startswith(field + ":") and why in str(ei.value)
    assert CAK not in str(ei.value)


def test_missing_keys_and_cak_never_in_repr() -> None:
    with pytest.raises(ConfigError, match=r"^macsec\.cak: required"):
        parse_link_config({"ckn": "01"})
    with pytest.raises(ConfigError, match=r"^links\[2\]\.macsec\.ckn: required"):
        parse_link_config({"cak": CAK}, "links[2].macsec")
    cfg = parse_link_config(BASE)
    assert CAK not in repr(cfg) and CAK not in json.dumps(cfg.public())
    assert isinstance(cfg, LinkConfig)


def test_cli_check_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.yaml"
    good.write_text(f'macsec: {{cipher: GcmAesXpn256, sci_state: Disabled, cak: "{CAK * 2}", ckn: "abcd"}}\n')
    res = runner.invoke(macsec, ["link", "check", str(good)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["cipher"] == "GcmAesXpn256" and out["sci_state"] == "Disabled" and CAK not in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text('{cak: "00", ckn: "01"}\n')
    res = runner.invoke(macsec, ["link", "check", str(bad)])
    assert res.exit_code == 2 and "macsec.cak: must be 16 or 32 bytes" in res.output and "Traceback" not in res.output
    res = runner.invoke(macsec, ["link", "check", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output
    (tmp_path / "broken.yaml").write_text("cak: [\n")
    res = runner.invoke(macsec, ["link", "check", str(tmp_path / "broken.yaml")])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    res = runner.invoke(macsec, ["link", "status", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "cannot read status" in res.output
    (tmp_path / "s.json").write_text("{not json")
    res = runner.invoke(macsec, ["link", "rekey", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and "not a link status file" in res.output
