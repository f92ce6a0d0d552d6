"""ipsecemu's MACsec SA key file: a JSON list of {"sci", "an", "cipher", "sak", ["ssci", "salt"]},
written by the MACsec link daemon and read by ``ipsecemu pcap decrypt --macsec-sa``.  Errors are
:class:`~ipsecemu.pcap.keyfile.KeyFileError` with the file name and list index; key bytes never
appear in messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig
from ipsecemu.pcap.keyfile import KeyFileError, read_key_text, write_secret

__all__ = ["parse_macsec_sa", "read_macsec_sa", "format_macsec_sa", "write_macsec_sa"]


def _hex_field(obj: dict[str, Any], key: str, where: str, length: int | None = None) -> bytes:
    v = obj.get(key)
    if not isinstance(v, str):
        raise KeyFileError(f"{where}: {key!r} must be a hex string")
    s = v.strip().removeprefix("0x").replace(":", "")
    try:
        b = bytes.fromhex(s)
    except ValueError:
        raise KeyFileError(f"{where}: {key!r} is not valid hex") from None
    if length is not None and len(b) != length:
        raise KeyFileError(f"{where}: {key!r} must be {length * 2} hex digits, got {len(s)}")
    return b


def parse_macsec_sa(text: str, source: str = "macsec_sa") -> list[MacsecSaConfig]:
    """Parse the MACsec SA JSON: a list of {"sci", "an", "cipher", "sak", ["ssci", "salt"]}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise KeyFileError(f"{source}: expected a JSON list of SA objects")
    out: list[MacsecSaConfig] = []
    for i, obj in enumerate(data):
        where = f"{source}[{i}]"
        if not isinstance(obj, dict):
            raise KeyFileError(f"{where}: expected an object")
        unknown = set(obj) - {"sci", "an", "cipher", "sak", "ssci", "salt", "comment"}
        if unknown:
            raise KeyFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        sci = _hex_field(obj, "sci", where, 8)
        an = obj.get("an")
        if not isinstance(an, int) or isinstance(an, bool) or not 0 <= an <= 3:
            raise KeyFileError(f"{where}: 'an' must be an integer 0..3")
        cipher = obj.get("cipher")
        if not isinstance(cipher, str):
            raise KeyFileError(f"{where}: 'cipher' must be a string")
        cipher = cipher.lower()
        sak = _hex_field(obj, "sak", where)
        ssci = int.from_bytes(_hex_field(obj, "ssci", where, 4), "big") if "ssci" in obj else None
        salt = _hex_field(obj, "salt", where, 12) if "salt" in obj else None
        try:
            out.append(MacsecSaConfig(cipher=cipher, sak=sak, sci=sci, an=an, ssci=ssci, salt=salt))
        except ConfigError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
    return out


def read_macsec_sa(path: str | Path) -> list[MacsecSaConfig]:
    return parse_macsec_sa(read_key_text(path, "MACsec SA"), str(path))


def format_macsec_sa(sas: Sequence[MacsecSaConfig]) -> str:
    items = []
    for sa in sas:
        obj: dict[str, object] = {"sci": sa.sci.hex(), "an": sa.an, "cipher": sa.cipher, "sak": sa.sak.hex()}
        if sa.xpn:
            obj["ssci"] = f"{sa.ssci:08x}"
            obj["salt"] = (sa.salt or b"").hex()
        items.append(obj)
    return json.dumps(items, indent=1) + "\n"


def write_macsec_sa(path: str | Path, sas: Sequence[MacsecSaConfig]) -> None:
    write_secret(Path(path), format_macsec_sa(sas))
