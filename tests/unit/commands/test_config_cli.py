"""`ipsecemu config check|import-azure` through the real click CLI."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ipsecemu.cli import cli

from support.paths import REPO

DEVICE_JSON = REPO / "tests" / "vectors" / "azure" / "vwan-vpn-device-config.example.json"


def test_import_azure_then_check_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "az.yaml"
    r = CliRunner().invoke(cli, ["config", "import-azure", str(DEVICE_JSON), "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    # two gateway instances (active-active) for the ER site, PSK kept out unless asked
    assert "10.51.230.4" in text and "10.51.230.5" in text
    assert "env:IPSECEMU_PSK" in text
    r = CliRunner().invoke(cli, ["config", "check", str(out)], env={"IPSECEMU_PSK": "x"})
    assert r.exit_code == 0, r.output
    assert "connection(s) OK" in r.output and "102400000 KB" in r.output


def test_check_reports_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("remote_address: 10.0.0.1\npsk: x\nipsec_policy:\n  ipsec_encryption: AES256\n"
                   "  ipsec_integrity: GCMAES256\n  ike_encryption: AES256\n  ike_integrity: SHA256\n"
                   "  dh_group: DHGroup2\n  pfs_group: None\n")
    r = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert r.exit_code == 2
    assert "bad.yaml:" in r.output and "ipsec_integrity" in r.output
    assert "Traceback" not in r.output


def test_check_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["config", "check", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "cannot read" in r.output and "Traceback" not in r.output
