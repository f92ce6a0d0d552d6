"""Key files for capture decryption: Wireshark's ``esp_sa`` and ``ikev2_decryption_table`` UAT
files (tshark 4.0 format), also built from charon's algorithm names (key-log rows).  ipsecemu's
MACsec SA JSON is :mod:`ipsecemu.pcap.macsec_sa`; the shared file handling :mod:`ipsecemu.pcap.keyfile`.

A UAT file has one record per line, fields comma-separated and double-quoted; ``#`` starts a
comment line.  In quoted strings Wireshark escapes ``"``, ``\\`` and non-printable bytes as
``\\xNN``.  The ``esp_sa`` record has 8 fields::

    "IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-GCM with 16 octet ICV [RFC4106]","0x<key><salt>","NULL",""

Algorithm names are the strings tshark 4.0 shows in its UAT dialog (checked against
libwireshark 4.0.17).  Keys are ``0x``-prefixed hex, or taken literally as ASCII otherwise (as
Wireshark does).  Addresses may be ``*`` (any), use ``*`` per IPv4 octet, or a ``/prefix``.
The SPI is hex (``0x...``), decimal, or ``*``.

Errors are :class:`KeyFileError` with the file name and line (or list index) in the message;
key bytes never appear in messages.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ipsecemu.base.algorithms import (
    ENCR_LIST,
    ESP_ENCR,
    ESP_INTEG,
    INTEG_LIST,
    INTEG_NONE,
    WIRESHARK_ESP_AUTH_EXTRA,
    WIRESHARK_ESP_ENCR_EXTRA,
    WIRESHARK_IKE_ENCR_EXTRA,
    WIRESHARK_IKE_INTEG_EXTRA,
    EncrAlg,
    IntegAlg,
)
from ipsecemu.base.errors import ConfigError, InputError
from ipsecemu.pcap.keyfile import KeyFileError, read_key_text, write_secret

__all__ = [
    "EspSaRow", "EspAlgorithm", "ESP_ENCRYPTION", "ESP_AUTHENTICATION",
    "parse_esp_sa", "read_esp_sa", "format_esp_sa", "write_esp_sa", "esp_row",
    "IkeSaRow", "IKE_ENCRYPTION", "IKE_INTEGRITY", "format_ikev2_table", "write_ikev2_table", "esp_rows_from_keylog",
    "ike_rows_from_keylog",
]


# Wireshark ESP encryption string -> ipsecemu ESP_ENCR name (None: Wireshark knows it, ipsecemu
# cannot decrypt it).  Built from the algorithm registry; nothing here is a table of its own.
ESP_ENCRYPTION: dict[str, str | None] = {
    **{e.wireshark_esp: e.esp_name for e in ENCR_LIST if e.wireshark_esp and e.esp_name},
    **WIRESHARK_ESP_ENCR_EXTRA,
}

# Wireshark ESP authentication string -> (ipsecemu ESP_INTEG name or None, ICV length, checked).
ESP_AUTHENTICATION: dict[str, tuple[str | None, int, bool]] = {
    **WIRESHARK_ESP_AUTH_EXTRA,
    **{i.wireshark_esp: (i.esp_name, i.icv_len, True) for i in INTEG_LIST if i.esp_name},
}

_ENCR_TO_WS = {v: k for k, v in ESP_ENCRYPTION.items() if v}
_INTEG_TO_WS = {v[0]: k for k, v in ESP_AUTHENTICATION.items() if v[0]}
_UNCHECKED_TO_WS = {v[1]: k for k, v in ESP_AUTHENTICATION.items() if not v[2] and v[1]}


@dataclass(frozen=True)
class EspAlgorithm:
    """What ipsecemu does with a row: ``encr``/``integ`` are data-plane names; ``verify`` is False
    when the ICV (``icv_len`` bytes, possibly 0) is skipped, not checked."""

    encr: str
    integ: str | None
    icv_len: int
    verify: bool


@dataclass(frozen=True)
class EspSaRow:
    """One ``esp_sa`` record.  ``encryption``/``authentication`` are the Wireshark strings."""

    protocol: str  # "IPv4" | "IPv6"
    src: str
    dst: str
    spi: str
    encryption: str
    enc_key: bytes
    authentication: str
    auth_key: bytes
    line: int = 0  # 1-based line in the file it came from (0: built in code)

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return (f"EspSaRow({self.protocol} {self.src} -> {self.dst} spi={self.spi} "
                f"{self.encryption!r} / {self.authentication!r})")

    @property
    def version(self) -> int:
        return 6 if self.protocol == "IPv6" else 4

    def spi_matches(self, spi: int) -> bool:
        return self.spi.strip() == "*" or _parse_spi(self.spi) == spi

    def matches(self, version: int, src: str, dst: str, spi: int) -> bool:
        return (version == self.version and self.spi_matches(spi)
                and _addr_matches(self.src, src, version) and _addr_matches(self.dst, dst, version))

    def algorithm(self) -> EspAlgorithm | None:
        """The data-plane view of this row, or None if ipsecemu cannot decrypt it."""
        encr = ESP_ENCRYPTION[self.encryption]
        integ, icv_len, checked = ESP_AUTHENTICATION[self.authentication]
        if encr is None:
            return None
        aead_icv = ESP_ENCR[encr][4]
        if aead_icv:  # AEAD: the ICV is the tag, always verified; the auth column is ignored
            return EspAlgorithm(encr, None, aead_icv, True)
        if checked and integ is None:
            return None
        return EspAlgorithm(encr, integ, icv_len, checked)

    def unsupported_reason(self) -> str | None:
        if ESP_ENCRYPTION[self.encryption] is None:
            return f"encryption {self.encryption!r} is not supported by ipsecemu"
        if self.algorithm() is None:
            return f"authentication {self.authentication!r} is not supported by ipsecemu"
        return None


# ------------------------------------------------------------------ UAT lexing
_FIELD = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,"]*?))\s*(,|$)')


def _unescape(s: str, where: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", s[i + 2:i + 4]):
                out.append(chr(int(s[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _escape(s: str) -> str:
    return "".join(c if (" " <= c <= "~" and c not in '"\\') else f"\\x{ord(c):02x}" for c in s)


def split_uat_line(line: str, where: str) -> list[str]:
    """Split one UAT record into its (unescaped) fields."""
    fields: list[str] = []
    pos = 0
    text = line.rstrip("\r\n")
    while True:
        m = _FIELD.match(text, pos)
        if not m or (m.end() == pos and pos < len(text)):
            raise KeyFileError(f"{where}: cannot parse field {len(fields) + 1} (unbalanced quotes?)")
        quoted, bare, sep = m.groups()
        fields.append(_unescape(quoted, where) if quoted is not None else (bare or "").strip())
        pos = m.end()
        if sep != ",":
            if pos < len(text):
                raise KeyFileError(f"{where}: unexpected text after field {len(fields)}")
            return fields


def _uat_records(text: str, source: str) -> Iterable[tuple[int, list[str]]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        yield n, split_uat_line(line, f"{source}, line {n}")


# ------------------------------------------------------------------ keys, SPIs, addresses
def _parse_key(value: str, where: str) -> bytes:
    """Wireshark's rule: "0x" + hex digits (odd count: leading 0 implied), else the ASCII text."""
    v = value.strip()
    if v[:2].lower() == "0x":
        digits = v[2:]
        if len(digits) % 2:
            digits = "0" + digits
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise KeyFileError(f"{where}: bad hex in key (expected 0x followed by hex digits)") from None
    try:
        return v.encode("ascii")
    except UnicodeEncodeError:
        raise KeyFileError(f"{where}: key is neither 0x-hex nor ASCII") from None


def _parse_spi(value: str) -> int:
    v = value.strip()
    return int(v, 16) if v[:2].lower() == "0x" else int(v, 10)


def _check_spi(value: str, where: str) -> None:
    if value.strip() == "*":
        return
    try:
        spi = _parse_spi(value)
    except ValueError:
        raise KeyFileError(f"{where}: bad SPI {value!r} (use 0x-hex, decimal or *)") from None
    if not 0 <= spi < 1 << 32:
        raise KeyFileError(f"{where}: SPI {value!r} out of range (32 bits)")


def _addr_matches(pattern: str, addr: str, version: int) -> bool:
    p = pattern.strip()
    if p in ("*", ""):
        return True
    try:
        if "/" in p:
            return ipaddress.ip_address(addr) in ipaddress.ip_network(p, strict=False)
        if version == 4 and "*" in p:
            return all(a == "*" or a == b for a, b in zip(p.split("."), addr.split("."), strict=True))
        return ipaddress.ip_address(p) == ipaddress.ip_address(addr)
    except ValueError:
        return False


def _check_addr(pattern: str, version: int, where: str) -> None:
    p = pattern.strip()
    if p in ("*", ""):
        return
    try:
        if "/" in p:
            net = ipaddress.ip_network(p, strict=False)
            ok = net.version == version
        elif version == 4 and "*" in p:
            parts = p.split(".")
            ok = len(parts) == 4 and all(x == "*" or (x.isdigit() and int(x) < 256) for x in parts)
        else:
            ok = ipaddress.ip_address(p).version == version
    except ValueError:
        ok = False
    if not ok:
        raise KeyFileError(f"{where}: bad IPv{version} address filter {pattern!r}")


# ------------------------------------------------------------------ esp_sa
def parse_esp_sa(text: str, source: str = "esp_sa") -> list[EspSaRow]:
    """Parse an ``esp_sa`` UAT file's text.  Raises KeyFileError naming the bad line."""
    rows: list[EspSaRow] = []
    for n, f in _uat_records(text, source):
        where = f"{source}, line {n}"
        if len(f) != 8:
            raise KeyFileError(f"{where}: expected 8 fields (protocol, src, dst, spi, encryption, "
                               f"key, authentication, key), got {len(f)}")
        proto, src, dst, spi, encr, ekey, auth, akey = f
        if proto not in ("IPv4", "IPv6"):
            raise KeyFileError(f"{where}: protocol must be \"IPv4\" or \"IPv6\", got {proto!r}")
        version = 6 if proto == "IPv6" else 4
        _check_addr(src, version, where)
        _check_addr(dst, version, where)
        _check_spi(spi, where)
        if encr not in ESP_ENCRYPTION:
            raise KeyFileError(f"{where}: unknown encryption algorithm {encr!r}; known: "
                               + ", ".join(repr(k) for k in ESP_ENCRYPTION))
        if auth not in ESP_AUTHENTICATION:
            raise KeyFileError(f"{where}: unknown authentication algorithm {auth!r}; known: "
                               + ", ".join(repr(k) for k in ESP_AUTHENTICATION))
        row = EspSaRow(proto, src, dst, spi, encr, _parse_key(ekey, where), auth, _parse_key(akey, where), n)
        _check_key_lengths(row, where)
        rows.append(row)
    return rows


def _check_key_lengths(row: EspSaRow, where: str) -> None:
    alg = row.algorithm()
    if alg is None:
        return  # reported (and the row skipped) by the decryptor
    keylens, salt, *_ = ESP_ENCR[alg.encr]
    if len(row.enc_key) - salt not in keylens:
        want = " or ".join(str(k + salt) for k in keylens)
        raise KeyFileError(f"{where}: {row.encryption} needs a {want}-byte key"
                           f"{' (key + 4-byte salt)' if salt else ''}, got {len(row.enc_key)} bytes")
    if alg.integ and len(row.auth_key) != ESP_INTEG[alg.integ][0]:
        raise KeyFileError(f"{where}: {row.authentication} needs a {ESP_INTEG[alg.integ][0]}-byte key, "
                           f"got {len(row.auth_key)} bytes")


def read_esp_sa(path: str | Path) -> list[EspSaRow]:
    return parse_esp_sa(read_key_text(path, "esp_sa"), str(path))


def _hexkey(key: bytes) -> str:
    return "0x" + key.hex() if key else ""


def format_esp_sa(rows: Iterable[EspSaRow]) -> str:
    """Render rows as an ``esp_sa`` UAT file tshark 4.0 reads."""
    out = ["# This file is automatically generated, DO NOT MODIFY.\n"]
    for r in rows:
        fields = [r.protocol, r.src, r.dst, r.spi, r.encryption, _hexkey(r.enc_key),
                  r.authentication, _hexkey(r.auth_key)]
        out.append(",".join(f'"{_escape(x)}"' for x in fields) + "\n")
    return "".join(out)


def write_esp_sa(path: str | Path, rows: Iterable[EspSaRow]) -> None:
    write_secret(Path(path), format_esp_sa(rows))


def esp_row(src: str, dst: str, spi: int, encr: str, enc_key: bytes, integ: str | None = None,
            integ_key: bytes = b"", *, verify_icv: bool = True, icv_len: int = 12) -> EspSaRow:
    """Build a row from data-plane names (``EspSaConfig.encr``/``integ``).  ``integ=None`` with a
    non-AEAD cipher and ``verify_icv=False`` writes "ANY <icv_len*8> bit" (ICV present, unchecked)."""
    if encr not in _ENCR_TO_WS:
        raise ConfigError(f"encr: {encr!r} has no Wireshark name")
    version = 6 if ":" in src or ":" in dst else 4
    if ESP_ENCR[encr][4]:
        auth, akey = "NULL", b""
    elif integ is None or not verify_icv:
        if icv_len == 0:
            auth = "NULL"
        elif icv_len in _UNCHECKED_TO_WS:
            auth = _UNCHECKED_TO_WS[icv_len]
        else:
            raise ConfigError(f"icv_len: Wireshark has no unchecked {icv_len}-byte ICV")
        akey = b""
    else:
        if integ not in _INTEG_TO_WS:
            raise ConfigError(f"integ: {integ!r} has no Wireshark name")
        auth, akey = _INTEG_TO_WS[integ], integ_key
    return EspSaRow(f"IPv{version}", src, dst, f"0x{spi:08x}", _ENCR_TO_WS[encr], enc_key, auth, akey)


# ------------------------------------------------------------------ ikev2_decryption_table
# ipsecemu names (strongSwan keywords, ipsecemu.base.algorithms) -> tshark 4.0 strings
IKE_ENCRYPTION: dict[str, str] = {
    **{e.keyword: e.wireshark_ike for e in ENCR_LIST if e.wireshark_ike},
    **WIRESHARK_IKE_ENCR_EXTRA,
}
IKE_INTEGRITY: dict[str, str] = {
    **{i.keyword: i.wireshark_ike for i in (*INTEG_LIST, INTEG_NONE)},
    **WIRESHARK_IKE_INTEG_EXTRA,
}


@dataclass(frozen=True)
class IkeSaRow:
    """One ``ikev2_decryption_table`` record.  ``encryption``/``integrity`` are either keys of
    IKE_ENCRYPTION/IKE_INTEGRITY (strongSwan-style keywords) or the tshark strings themselves."""

    spi_i: bytes  # 8 bytes
    spi_r: bytes
    sk_ei: bytes
    sk_er: bytes
    encryption: str
    sk_ai: bytes
    sk_ar: bytes
    integrity: str

    def __repr__(self) -> str:
        return f"IkeSaRow({self.spi_i.hex()}/{self.spi_r.hex()} {self.encryption} {self.integrity})"


def format_ikev2_table(rows: Iterable[IkeSaRow]) -> str:
    """Render ``ikev2_decryption_table`` (SPIs and keys as bare unquoted hex, as tshark requires)."""
    out = ["# This file is automatically generated, DO NOT MODIFY.\n"]
    for r in rows:
        if len(r.spi_i) != 8 or len(r.spi_r) != 8:
            raise ConfigError("spi_i/spi_r: IKE SPIs are 8 bytes")
        encr = IKE_ENCRYPTION.get(r.encryption, r.encryption)
        integ = IKE_INTEGRITY.get(r.integrity, r.integrity)
        if encr not in IKE_ENCRYPTION.values():
            raise ConfigError(f"encryption: no tshark name for {r.encryption!r}")
        if integ not in IKE_INTEGRITY.values():
            raise ConfigError(f"integrity: no tshark name for {r.integrity!r}")
        # byte fields are bare hex, the two enum fields quoted strings (Wireshark's UAT layout)
        fields = [r.spi_i.hex(), r.spi_r.hex(), r.sk_ei.hex(), r.sk_er.hex(), f'"{_escape(encr)}"',
                  r.sk_ai.hex(), r.sk_ar.hex(), f'"{_escape(integ)}"']
        out.append(",".join(fields) + "\n")
    return "".join(out)


def write_ikev2_table(path: str | Path, rows: Iterable[IkeSaRow]) -> None:
    write_secret(Path(path), format_ikev2_table(rows))


# ------------------------------------------------------------------ from a charon key log
# charon reports algorithms by its enum names (list-sas ``encr-alg``/``integ-alg``, "AES_GCM_16"); the
# registry maps them to our entries, whose Wireshark names the rows carry.
def _charon_encr(swan_name: str, key_bits: int | None) -> EncrAlg:
    for e in ENCR_LIST:
        if e.swan_name == swan_name and (key_bits is None or e.key_bits in (None, key_bits)):
            return e
    raise ConfigError(f"encr-alg: charon's {swan_name!r} ({key_bits} bits) is not in the algorithm registry")


def _charon_integ(swan_name: str) -> IntegAlg:
    if not swan_name:
        return INTEG_NONE
    for i in INTEG_LIST:
        if i.swan_name == swan_name:
            return i
    raise ConfigError(f"integ-alg: charon's {swan_name!r} is not in the algorithm registry")


def _hex_of(row: Mapping[str, str], key: str) -> bytes:
    try:
        return bytes.fromhex(row.get(key, "") or "")
    except ValueError:
        raise InputError(f"key log: {key} is not hex: {row.get(key)!r}") from None


def esp_rows_from_keylog(rows: Iterable[Mapping[str, str]], encr_alg: str = "AES_GCM_16",
                         integ_alg: str = "") -> list[EspSaRow]:
    """``esp_sa`` rows from charon key-log ESP rows (``src``, ``dst``, ``spi``, ``enc``, ``integ``; SPI
    and keys hex without ``0x``) of one Child SA whose algorithms charon names ``encr_alg``/``integ_alg``
    (list-sas ``encr-alg``/``integ-alg``; ``integ_alg`` empty for AEAD).  Render with :func:`format_esp_sa`."""
    e = _charon_encr(encr_alg, None)
    encryption = next((ws for ws, name in ESP_ENCRYPTION.items() if e.esp_name and name == e.esp_name), None)
    if encryption is None:
        raise ConfigError(f"encr-alg: {encr_alg!r} has no Wireshark name")
    i = _charon_integ(integ_alg)
    authentication = "NULL" if i is INTEG_NONE or e.aead else i.wireshark_esp
    out = []
    for r in rows:
        version = 6 if ":" in r["src"] else 4
        akey = b"" if authentication == "NULL" else _hex_of(r, "integ")
        out.append(EspSaRow(f"IPv{version}", r["src"], r["dst"], f"0x{r['spi']}", encryption, _hex_of(r, "enc"),
                            authentication, akey))
    return out


def ike_rows_from_keylog(rows: Iterable[Mapping[str, str]], encr_alg: str, integ_alg: str = "",
                         key_size: int | None = None) -> list[IkeSaRow]:
    """``ikev2_decryption_table`` rows from charon key-log IKE rows (``spi_i``, ``spi_r``, ``sk_ei``,
    ``sk_er``, ``sk_ai``, ``sk_ar`` in hex; rows without ``spi_i`` are skipped) of one IKE SA whose
    algorithms charon names ``encr_alg``/``integ_alg`` with ``key_size`` (list-sas ``encr-keysize``).
    Render with :func:`format_ikev2_table`."""
    e = _charon_encr(encr_alg, key_size)
    if not e.wireshark_ike:
        raise ConfigError(f"encr-alg: {encr_alg!r} has no tshark IKEv2 name")
    integ = _charon_integ(integ_alg).keyword
    return [IkeSaRow(_hex_of(r, "spi_i"), _hex_of(r, "spi_r"), _hex_of(r, "sk_ei"), _hex_of(r, "sk_er"),
                     e.keyword, _hex_of(r, "sk_ai"), _hex_of(r, "sk_ar"), integ)
            for r in rows if r.get("spi_i")]
