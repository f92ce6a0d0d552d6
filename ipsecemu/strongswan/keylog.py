"""Keys from a level-4 charon log (``ike``/``chd`` = 4): IKE SK_* keys and per-direction ESP keys and
SPIs, and the adapter that turns them into rows of the one Wireshark key-file writer,
:mod:`ipsecemu.pcap.uat`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.algorithms import ENCR_LIST, INTEG_LIST
from ipsecemu.pcap.uat import EspSaRow, IkeSaRow, esp_row, format_esp_sa, format_ikev2_table

__all__ = ["CHARON_ENCR", "CHARON_INTEG", "KeyLog", "esp_rows", "ike_algorithms", "ike_rows", "parse_keys",
           "wireshark_esp_sa", "wireshark_ikev2"]

#: list-sas algorithm names -> ipsecemu.base.satypes ESP names (views of the algorithm registry)
CHARON_ENCR: dict[str, str] = {e.swan_name: e.esp_name for e in ENCR_LIST if e.esp_name}
CHARON_INTEG: dict[str, str] = {i.swan_name: i.esp_name for i in INTEG_LIST if i.esp_name}


@dataclass
class KeyLog:
    """Keys recovered from a level-4 charon log (hex strings, lower case).

    ``ike`` rows: ``uid`` (charon's IKE_SA unique id), ``sk_d``, ``sk_ei``, ``sk_er``, ``sk_ai``,
    ``sk_ar`` (absent for AEAD), ``sk_pi``, ``sk_pr``; :meth:`Charon.keys` adds ``spi_i``/``spi_r``.
    ``esp`` rows, one per direction: ``spi`` (hex), ``src``, ``dst``, ``enc`` (key || salt for
    AEAD), ``integ`` ("" for AEAD), ``uid``.
    """

    ike: list[dict[str, str]] = field(default_factory=list)
    esp: list[dict[str, str]] = field(default_factory=list)


# "<conn|uid>", or just "<uid>" while a responder does not know the connection yet
_PREFIX = re.compile(r"^\S+ (\d+)\[(\w+)\] (?:<(?:[^|>]*\|)?(\d+)> )?(.*)$")
_HEXLINE = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} ){1,16})")
_SECRET = re.compile(r"^(Sk_\w+) secret => (\d+) bytes")
_CHILDKEY = re.compile(r"^(encryption|integrity) (initiator|responder) key => (\d+) bytes")
_SA_LINE = re.compile(r"^\s*SPI 0x([0-9a-f]{8}), src (\S+) dst (\S+)")
_ADDING = re.compile(r"^adding (inbound|outbound) ESP SA")
_PARSED = re.compile(r"^parsed \S+ (request|response)")


def parse_keys(text: str) -> KeyLog:
    """Extract IKE SK_* keys and per-direction ESP keys/SPIs from a charon log (ike/chd = 4).

    charon prints each secret as ``<name> => N bytes @ 0x...`` and then hex-dump lines.  The
    "initiator" ESP keys protect traffic from the initiator of the exchange that created the
    CHILD_SA, so we remember per worker thread whether it last parsed a request or a response.
    """
    out = KeyLog()
    ike_rows: dict[str, dict[str, str]] = {}
    last_parsed: dict[str, str] = {}
    child: dict[str, dict[str, str]] = {}  # per thread: keys of the CHILD_SA being installed
    pending_dir: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _PREFIX.match(lines[i])
        i += 1
        if not m:
            continue
        thread, uid, msg = m.group(1), m.group(3) or "", m.group(4)
        if (p := _PARSED.match(msg)):
            last_parsed[thread] = p.group(1)
        elif (s := _SECRET.match(msg)):
            hexs, i = _read_dump(lines, i, int(s.group(2)))
            row = ike_rows.setdefault(uid, {"uid": uid})
            if s.group(1).lower() == "sk_d" and "sk_d" in row:  # IKE rekey: a new SA under this uid
                out.ike.append(row)
                row = ike_rows[uid] = {"uid": uid}
            row[s.group(1).lower()] = hexs
        elif (k := _CHILDKEY.match(msg)):
            hexs, i = _read_dump(lines, i, int(k.group(3)))
            child.setdefault(thread, {})[f"{k.group(1)[:3]}_{k.group(2)[0]}"] = hexs
        elif (a := _ADDING.match(msg)):
            pending_dir[thread] = a.group(1)
        elif (sa := _SA_LINE.match(msg)) and thread in pending_dir and thread in child:
            keys = child[thread]
            we_initiated = last_parsed.get(thread) == "response"
            outbound = pending_dir.pop(thread) == "outbound"
            who = "i" if outbound == we_initiated else "r"
            out.esp.append({"uid": uid, "spi": sa.group(1), "src": sa.group(2), "dst": sa.group(3),
                            "enc": keys.get(f"enc_{who}", ""), "integ": keys.get(f"int_{who}", "")})
            if outbound:
                child.pop(thread, None)
    out.ike.extend(ike_rows.values())
    return out


def _read_dump(lines: list[str], i: int, n: int) -> tuple[str, int]:
    got = ""
    while i < len(lines) and len(got) < 2 * n:
        m = _PREFIX.match(lines[i])
        h = _HEXLINE.match(m.group(4)) if m else None
        if not h:
            break
        got += h.group(1).replace(" ", "").lower()
        i += 1
    return got, i


# ------------------------------------------------------------------ adapter to pcap.uat
def esp_rows(rows: Iterable[dict[str, str]], encr: str = "AES_GCM_16", integ: str = "") -> list[EspSaRow]:
    """``esp_sa`` rows from :attr:`KeyLog.esp` rows; ``encr``/``integ`` are charon's algorithm names as
    list-sas reports them (``encr-alg``/``integ-alg``).  Algorithms ipsecemu has no name for are
    skipped (the writer only knows those it can also decrypt)."""
    dp_encr, dp_integ = CHARON_ENCR.get(encr), CHARON_INTEG.get(integ) if integ else None
    if dp_encr is None or (integ and dp_integ is None):
        return []
    return [esp_row(r["src"], r["dst"], int(r["spi"], 16), dp_encr, bytes.fromhex(r["enc"]), dp_integ,
                    bytes.fromhex(r.get("integ") or "")) for r in rows]


def ike_rows(rows: Iterable[dict[str, str]], encr: str = "AES-CBC-256 [RFC3602]",
             integ: str = "HMAC_SHA2_256_128 [RFC4868]") -> list[IkeSaRow]:
    """``ikev2_decryption_table`` rows from :attr:`KeyLog.ike` rows that carry SPIs
    (:meth:`Charon.keys` adds them); ``encr``/``integ`` are tshark strings or uat keywords."""
    return [IkeSaRow(bytes.fromhex(r["spi_i"]), bytes.fromhex(r["spi_r"]), bytes.fromhex(r["sk_ei"]),
                     bytes.fromhex(r["sk_er"]), encr, bytes.fromhex(r.get("sk_ai", "")),
                     bytes.fromhex(r.get("sk_ar", "")), integ)
            for r in rows if "spi_i" in r]


# list-sas IKE algorithm names (and key size) -> tshark 4.0 ikev2_decryption_table strings, from the
# registry; a cipher without a key-size attribute (3DES) is found under its fixed size
_IKE_ENCR: dict[tuple[str, int], str] = {
    (e.swan_name, e.key_bits or e.key_len * 8): e.wireshark_ike for e in ENCR_LIST if e.wireshark_ike and e.ike_ok
}
_IKE_INTEG: dict[str, str] = {i.swan_name: i.wireshark_ike for i in INTEG_LIST if i.hash}


def ike_algorithms(sa: dict[str, Any]) -> tuple[str, str] | None:
    """(encryption, integrity) tshark strings for a list-sas IKE SA; None if Wireshark cannot decrypt it."""
    name = sa.get("encr-alg", "")
    size = str(sa.get("encr-keysize", "") or "")
    if not size.isdigit():
        fixed = [ks for (n, ks) in _IKE_ENCR if n == name]
        size = str(fixed[0]) if len(fixed) == 1 else "256"
    encr = _IKE_ENCR.get((name, int(size)))
    if encr is None:
        return None
    return encr, _IKE_INTEG.get(sa.get("integ-alg", ""), "NONE [RFC4306]")


def wireshark_esp_sa(rows: Iterable[dict[str, str]], encr: str = "AES_GCM_16", integ: str = "") -> str:
    """Wireshark ``esp_sa`` file text for :attr:`KeyLog.esp` rows (written by :mod:`ipsecemu.pcap.uat`)."""
    return format_esp_sa(esp_rows(rows, encr, integ))


def wireshark_ikev2(rows: Iterable[dict[str, str]], encr: str = "AES-CBC-256 [RFC3602]",
                    integ: str = "HMAC_SHA2_256_128 [RFC4868]") -> str:
    """Wireshark ``ikev2_decryption_table`` file text for :attr:`KeyLog.ike` rows (by :mod:`ipsecemu.pcap.uat`)."""
    return format_ikev2_table(ike_rows(rows, encr, integ))
