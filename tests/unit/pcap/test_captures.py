"""`ipsecemu pcap decrypt` on the real captures in tests/vectors/captures: the output holds
exactly the inner packets each sidecar lists, with the original timestamps."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.utils import RawPcapReader

from ipsecemu.cli import cli
from ipsecemu.pcap.uat import EspSaRow, write_esp_sa

from support.paths import VECTORS

CAPTURES = VECTORS / "captures"
ESP_CAPTURES = ["02-sunrise-sunset-esp", "08-sunrise-sunset-aes", "08-sunrise-sunset-esp2", "espudp1"]


def sidecar(name: str) -> dict:
    path = CAPTURES / f"{name}.json"
    if not path.exists():
        pytest.fail(f"capture sidecar not found: {path}")
    return json.loads(path.read_text())


def rows_from_sidecar(meta: dict, spis: set[str] | None = None) -> list[EspSaRow]:
    """One esp_sa row per SA; the sidecars publish no integrity key, so the 12-octet ICV is
    present but unchecked ("ANY 96 bit"), as the sidecar says to do."""
    rows = []
    for sa in meta["security_associations"]:
        if spis is not None and sa["spi"] not in spis:
            continue
        encr = "TripleDES-CBC [RFC2451]" if sa["encryption"].startswith("3DES") else "AES-CBC [RFC3602]"
        assert sa["icv_len"] == 12
        rows.append(EspSaRow("IPv4", "*", sa["dst"], "0x" + sa["spi"], encr, bytes.fromhex(sa["enc_key"]),
                             "ANY 96 bit authentication [no checking]", b""))
    return rows


def read_frames(path: Path) -> tuple[int, list[tuple[bytes, int, int]]]:
    with RawPcapReader(str(path)) as r:
        frames = [(data, m.sec, m.usec) for data, m in r]
        return r.linktype, frames


def run_decrypt(tmp_path: Path, capture: Path, rows: list[EspSaRow], *extra: str):
    keys = tmp_path / "esp_sa"
    write_esp_sa(keys, rows)
    out = tmp_path / "out.pcap"
    result = CliRunner().invoke(cli, ["pcap", "decrypt", str(capture), "-o", str(out), "--esp-sa", str(keys), *extra])
    return result, out


@pytest.mark.parametrize("name", ESP_CAPTURES)
def test_capture_decrypts_to_sidecar_inner_packets(tmp_path: Path, name: str) -> None:
    meta = sidecar(name)
    capture = CAPTURES / meta["file"]
    result, out = run_decrypt(tmp_path, capture, rows_from_sidecar(meta))
    assert result.exit_code == 0, result.output
    n = len(meta["frames"])
    assert f"frames read: {n}, decrypted: {n}" in result.output
    nested = any("nested" in f for f in meta["frames"])
    assert f"ESP layers: {2 * n if nested else n}" in result.output

    linktype, frames = read_frames(out)
    _, original = read_frames(capture)
    assert linktype == meta["linktype"] == 1
    assert len(frames) == n
    for (data, sec, usec), (odata, osec, ousec), expect in zip(frames, original, meta["frames"], strict=True):
        inner = expect["nested"]["decrypted_inner_packet"] if "nested" in expect else expect["decrypted_inner_packet"]
        assert data[:12] == odata[:12], "Ethernet addresses kept"
        assert struct.unpack_from("!H", data, 12)[0] == 0x0800
        assert data[14:].hex() == inner, f"frame {expect['frame']}"
        assert (sec, usec) == (osec, ousec), "timestamp kept"


def test_nested_capture_with_outer_key_only(tmp_path: Path) -> None:
    """Without the inner SA's key only the outer layer comes off; the inner ESP stays."""
    meta = sidecar("08-sunrise-sunset-esp2")
    result, out = run_decrypt(tmp_path, CAPTURES / meta["file"], rows_from_sidecar(meta, {"12345678"}))
    assert result.exit_code == 0, result.output
    _, frames = read_frames(out)
    assert [d[14:].hex() for d, _, _ in frames] == [f["decrypted_inner_packet"] for f in meta["frames"]]
    assert frames[0][0][14 + 9] == 50  # still ESP inside


def test_wrong_key_fails_every_frame(tmp_path: Path) -> None:
    meta = sidecar("08-sunrise-sunset-aes")
    rows = rows_from_sidecar(meta)
    bad = EspSaRow(rows[0].protocol, rows[0].src, rows[0].dst, rows[0].spi, rows[0].encryption,
                   bytes(32), rows[0].authentication, b"")
    result, out = run_decrypt(tmp_path, CAPTURES / meta["file"], [bad])
    assert result.exit_code == 9  # CheckFailed
    # with a wrong CBC key the padding check catches (almost) every frame
    assert "failed: 8" in result.output or "failed: 7" in result.output
    assert "frame 1: ESP SPI 0xd1234567 seq 1" in result.output


def test_no_matching_key_passes_frames_through(tmp_path: Path) -> None:
    meta = sidecar("02-sunrise-sunset-esp")
    rows = rows_from_sidecar(meta)
    other = EspSaRow("IPv4", "*", "*", "0x99999999", rows[0].encryption, rows[0].enc_key, rows[0].authentication, b"")
    capture = CAPTURES / meta["file"]
    result, out = run_decrypt(tmp_path, capture, [other])
    assert result.exit_code == 0, result.output
    assert "passed through: 8 (8 encrypted without a key)" in result.output
    assert [d for d, _, _ in read_frames(out)[1]] == [d for d, _, _ in read_frames(capture)[1]]


def test_ike_capture_copied_unchanged(tmp_path: Path) -> None:
    """The IKEv2 capture (BSD loopback link type 0) has no ESP: every frame is copied as is."""
    meta = sidecar("ikev2pI2")
    capture = CAPTURES / meta["file"]
    result, out = run_decrypt(tmp_path, capture, rows_from_sidecar(sidecar("02-sunrise-sunset-esp")))
    assert result.exit_code == 0, result.output
    assert "passed through: 2" in result.output
    lt, frames = read_frames(out)
    lt0, original = read_frames(capture)
    assert lt == lt0 == 0
    assert frames == original
