"""``ipsecemu lab check``: every mistake in what ``lab up`` will use is reported against the user's lab
file (file:line:field), exit status 2, before anything is built; ``lab up`` runs the same check first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ipsecemu.base.errors import ConfigError
from ipsecemu.commands.lab import lab
from ipsecemu.lab import check
from ipsecemu.lab.topology import TopologyError

from support.paths import LABS  # noqa: E402

MACSEC_LAB = LABS / "er-direct-macsec.yaml"


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln][nth]


def _typo(tmp_path: Path, old: str, new: str, nth: int = 0) -> tuple[Path, int]:
    """The MACsec lab with the ``nth`` occurrence of ``old`` replaced; the file and that line."""
    text = MACSEC_LAB.read_text()
    line = _line_of(text, old, nth)
    lines = text.splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    f = tmp_path / "mylab.yaml"
    f.write_text("".join(lines))
    return f, line


@pytest.mark.parametrize("lab_file", sorted(LABS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_labs_pass(lab_file: Path) -> None:
    res = CliRunner().invoke(lab, ["check", str(lab_file)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output


def test_ike_key_typo_is_reported_in_the_lab_file(tmp_path: Path) -> None:
    f, line = _typo(tmp_path, "dh_group: DHGroup14", "dh_grup: DHGroup14")
    res = CliRunner().invoke(lab, ["check", str(f)])
    assert res.exit_code == ConfigError.exit_status == 2
    assert f"{f}:{line}: vpn.connections[0].config.ipsec_policy.dh_grup: unknown key" in res.output
    assert "gateway.yaml" not in res.output and "Traceback" not in res.output


def test_macsec_cipher_typo_is_reported_in_the_lab_file(tmp_path: Path) -> None:
    f, line = _typo(tmp_path, "cipher: GcmAesXpn256", "cipher: GcmAesXpn265", nth=1)
    with pytest.raises(TopologyError) as ei:
        check.check_file(f)
    assert (ei.value.file, ei.value.line) == (str(f), line)
    assert ei.value.field.startswith("links[") and ei.value.field.endswith("].macsec.cipher")
    assert "unknown cipher 'GcmAesXpn265'" in ei.value.message
    res = CliRunner().invoke(lab, ["check", str(f)])
    assert res.exit_code == 2 and f"{f}:{line}: links[" in res.output


@pytest.mark.parametrize("old,new,field,why", [
    ("psk: er-vwan-lab-only-psk", "psk: env:IPSECEMU_LAB_CHECK_UNSET", "vpn.connections[0].config.psk",
     "IPSECEMU_LAB_CHECK_UNSET is not set"),
    ("pfs_group: PFS2048", "pfs_group: PFS4096", "vpn.connections[0].config.ipsec_policy.pfs_group",
     "must be one of"),
    ("ckn: ", "ckn: zz", ".macsec.ckn", "not valid hex"),
])
def test_other_mistakes_name_file_line_field(tmp_path: Path, old: str, new: str, field: str, why: str) -> None:
    os.environ.pop("IPSECEMU_LAB_CHECK_UNSET", None)
    f, line = _typo(tmp_path, old, new)
    with pytest.raises(TopologyError) as ei:
        check.check_file(f)
    assert ei.value.line == line and field in ei.value.field and why in ei.value.message, str(ei.value)


def test_ike_core_refusal_is_placed_in_the_lab_file(tmp_path: Path) -> None:
    """A certificate that cannot be read is the IKE core's finding; it still names the lab file."""
    text = MACSEC_LAB.read_text().replace(
        "psk: er-vwan-lab-only-psk", f"auth: {{method: cert, cert: {tmp_path}/no.pem, key: {tmp_path}/no.key, "
                                     f"ca: {tmp_path}/ca.pem}}", 1)
    f = tmp_path / "certlab.yaml"
    f.write_text(text)
    with pytest.raises(TopologyError) as ei:
        check.check_file(f)
    assert ei.value.file == str(f) and ei.value.line and ei.value.field.startswith("vpn.connections[0]")


def test_lab_up_runs_the_check_first(tmp_path: Path) -> None:
    """``lab up`` on a typo fails with the same located message, before asking for root or building."""
    f, line = _typo(tmp_path, "dh_group: DHGroup14", "dh_grup: DHGroup14")
    res = CliRunner().invoke(lab, ["up", str(f), "--name", "cfgcheck-never-built"])
    assert res.exit_code != 0
    assert f"{f}:{line}: vpn.connections[0].config.ipsec_policy.dh_grup: unknown key" in res.output
    assert "building" not in res.output



@pytest.mark.parametrize("lab_file,renames,end,tun", [
    # gwa's tun for its one connection is vpn0: a link end named so used to pass the check
    (LABS / "pair.yaml", [("      lan: [10.1.0.1/24]", "      vpn0: [10.1.0.1/24]")], "gwa:lan", "vpn0"),
    # a strongSwan node's tun is kernel-libipsec's ipsec0
    (LABS / "er-vwan-strongswan.yaml", [("      lan2: [10.0.2.1/24]", "      ipsec0: [10.0.2.1/24]")], "ce:lan2",
     "ipsec0"),
], ids=["ipsecemu", "strongswan"])
def test_interface_named_like_a_generated_tun(tmp_path: Path, lab_file: Path, renames: list[tuple[str, str]],
                                              end: str, tun: str) -> None:
    text = lab_file.read_text()
    line = _line_of(text, f'"{end}"')
    node = end.split(":")[0]
    for old, new in [*renames, (f'"{end}"', f'"{node}:{tun}"')]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    f = tmp_path / "tunname.yaml"
    f.write_text(text)
    res = CliRunner().invoke(lab, ["check", str(f)])
    assert res.exit_code == 2, res.output
    assert f"{f}:{line}: links[" in res.output and f"interface '{node}:{tun}' has the name of" in res.output
    assert "rename the interface" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
