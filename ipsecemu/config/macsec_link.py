"""MACsec link settings (one end of an ExpressRoute Direct style link): a ``macsec:`` mapping ->
:class:`LinkConfig`.

Keys follow Azure's names (``cipher``, ``sci_state``, ``cak``, ``ckn``) plus ``replay_window``,
``validate``, ``key_server_priority``, tags and MKA timers.  Errors name the field (``where.key``) and,
when the mapping came from a file read by the config kit, ``file:line`` too -- a lab file's
``links[i].macsec`` the same way as a stand-alone link file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipsecemu.base.algorithms import AZURE_MACSEC_CIPHER, MACSEC_CIPHERS
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import VALIDATE_MODES, SecYConfig
from ipsecemu.config.kit import ConfigFileError, Doc, FieldPath, load_yaml, read_text

# Azure's names (Set-AzExpressRoutePort -MacSecCipher) and the IEEE ones, compared without case/-/_
# Accepted spellings: Azure's names squashed ("gcmaesxpn256"); the tables are the registry's.
_CIPHERS = {az.lower(): name for name, az in AZURE_MACSEC_CIPHER.items()}
AZURE_CIPHER = AZURE_MACSEC_CIPHER
LINK_KEYS = ("cipher", "sci_state", "cak", "ckn", "replay_window", "validate", "key_server_priority",
             "vlan", "qinq", "hello_time", "life_time", "pn_exhaustion_threshold", "offload")
DEFAULT_PN_THRESHOLD = 0xC0000000  # rekey at 3/4 of the 32-bit PN space (XPN: of the high 32 bits)


@dataclass(frozen=True)
class LinkConfig:
    """One end's MACsec settings (both ends of a link use the same)."""

    cak: bytes = field(repr=False)
    ckn: bytes
    cipher: str = "gcm-aes-128"
    include_sci: bool = True  # Azure sci_state: Enabled
    replay_window: int = 0
    validate: str = "strict"
    key_server_priority: int = 16
    vlan: int | None = None  # Azure Dot1Q: C-tag on the tap's frames
    qinq: tuple[int, int] | None = None  # Azure QinQ: (S-tag, C-tag)
    hello_time: float = 2.0  # 802.1X MKA Hello Time
    life_time: float = 6.0  # 802.1X MKA Life Time
    # Tx PN at which MKA asks for a new SAK (XPN: this << 32); lowered only to test rotation
    pn_exhaustion_threshold: int = DEFAULT_PN_THRESHOLD
    # tap with TSO/GRO (a vnet header per frame): the loop cuts and coalesces TCP super-packets;
    # off: one frame per read/write (slower; for comparison)
    offload: bool = True

    def secy(self) -> SecYConfig:
        return SecYConfig(include_sci=self.include_sci, end_station=not self.include_sci,
                          replay_protect=True, replay_window=self.replay_window, validate=self.validate,
                          pn_exhaustion_threshold=self.pn_exhaustion_threshold)

    @property
    def tag_bytes(self) -> int:
        return 4 if self.vlan is not None else 8 if self.qinq is not None else 0

    def public(self) -> dict[str, Any]:
        """The settings without the CAK (status, logs)."""
        return {"cipher": AZURE_CIPHER[self.cipher], "sci_state": "Enabled" if self.include_sci else "Disabled",
                "ckn": self.ckn.hex(), "replay_window": self.replay_window, "validate": self.validate,
                "key_server_priority": self.key_server_priority, "vlan": self.vlan,
                "qinq": list(self.qinq) if self.qinq else None, "offload": self.offload}


class _Where:
    """Names a field for an error: ``where.key`` and, with a kit :class:`Doc`, ``file:line``."""

    def __init__(self, where: str, doc: Doc | None, path: FieldPath) -> None:
        self.where, self.doc, self.path = where, doc, path

    def error(self, key: str | None, message: str) -> ConfigError:
        if self.doc is not None:
            return self.doc.error((*self.path, key) if key else self.path, message)
        return ConfigError(f"{self.where}{'.' + key if key else ''}: {message}")


def _hex(w: _Where, value: Any, key: str, lengths: tuple[int, ...] | range) -> bytes:
    if isinstance(value, int) and not isinstance(value, bool):
        raise w.error(key, "write it as a quoted hex string (YAML read a number)")
    if not isinstance(value, str):
        raise w.error(key, "must be a hex string")
    text = value.strip().replace(":", "").replace(" ", "")
    if text.lower().startswith("0x"):
        text = text[2:]
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise w.error(key, "not valid hex") from None
    if len(raw) not in lengths:
        want = " or ".join(str(n) for n in lengths) if isinstance(lengths, tuple) else \
            f"{lengths.start}-{lengths.stop - 1}"
        raise w.error(key, f"must be {want} bytes, got {len(raw)}")
    return raw


def _int(w: _Where, m: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None) -> int | None:
    if key not in m or m[key] is None:
        return default
    v = m[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise w.error(key, f"must be an integer {lo}..{hi}, got {v!r}")
    return v


def _seconds(w: _Where, m: Mapping[str, Any], key: str, default: float) -> float:
    v = m.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
        raise w.error(key, f"must be a number of seconds (0, 3600], got {v!r}")
    return float(v)


def parse_link_config(m: Mapping[str, Any], where: str = "macsec", *, doc: Doc | None = None,
                      path: FieldPath = ()) -> LinkConfig:
    """Validate a ``macsec:`` mapping; ConfigError messages name the field (``where.key``).  With
    ``doc`` (the kit document the mapping came from) and its ``path`` there, errors carry
    ``file:line: path.key``."""
    w = _Where(where, doc, path)
    if not isinstance(m, Mapping):
        raise w.error(None, "must be a mapping")
    unknown = sorted(str(k) for k in m if k not in LINK_KEYS)
    if unknown:
        raise w.error(unknown[0], f"unknown key (known: {', '.join(LINK_KEYS)})")
    for req in ("cak", "ckn"):
        if req not in m:
            raise w.error(req, "required (the pre-shared CAK and its name, hex)")
    cipher_in = m.get("cipher", "GcmAes128")
    cipher = _CIPHERS.get(re.sub(r"[-_ ]", "", str(cipher_in)).lower()) if isinstance(cipher_in, str) else None
    if cipher is None:
        raise w.error("cipher", f"unknown cipher {cipher_in!r}; use one of "
                                f"{', '.join(AZURE_CIPHER.values())} (or {', '.join(MACSEC_CIPHERS)})")
    sci_state = m.get("sci_state", "Enabled")
    if isinstance(sci_state, bool):
        include_sci = sci_state
    elif isinstance(sci_state, str) and sci_state.lower() in ("enabled", "disabled"):
        include_sci = sci_state.lower() == "enabled"
    else:
        raise w.error("sci_state", f"must be Enabled or Disabled, got {sci_state!r}")
    cak = _hex(w, m["cak"], "cak", (16, 32))
    ckn = _hex(w, m["ckn"], "ckn", range(1, 33))
    validate_in = m.get("validate", "strict")
    validate = validate_in.lower() if isinstance(validate_in, str) else ""
    if validate not in VALIDATE_MODES:
        raise w.error("validate", f"must be one of {', '.join(VALIDATE_MODES)}, got {validate_in!r}")
    replay = _int(w, m, "replay_window", 0, 4096, 0)
    prio = _int(w, m, "key_server_priority", 0, 255, 16)
    vlan = _int(w, m, "vlan", 1, 4094, None)
    qinq = None
    if m.get("qinq") is not None:
        q = m["qinq"]
        if not isinstance(q, list | tuple) or len(q) != 2 or \
                not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4094 for x in q):
            raise w.error("qinq", f"must be [S-tag, C-tag], each 1..4094, got {q!r}")
        qinq = (int(q[0]), int(q[1]))
    if vlan is not None and qinq is not None:
        raise w.error("vlan", "give either vlan (Dot1Q) or qinq, not both")
    hello = _seconds(w, m, "hello_time", 2.0)
    life = _seconds(w, m, "life_time", 6.0)
    if life <= hello:
        raise w.error("life_time", "must be longer than hello_time")
    pn = _int(w, m, "pn_exhaustion_threshold", 2, 0xFFFFFFFF, DEFAULT_PN_THRESHOLD)
    offload = m.get("offload", True)
    if not isinstance(offload, bool):
        raise w.error("offload", f"must be true or false, got {offload!r}")
    return LinkConfig(cak=cak, ckn=ckn, cipher=cipher, include_sci=include_sci, replay_window=replay or 0,
                      validate=validate, key_server_priority=prio if prio is not None else 16, vlan=vlan,
                      qinq=qinq, hello_time=hello, life_time=life, pn_exhaustion_threshold=pn or DEFAULT_PN_THRESHOLD,
                      offload=offload)


def load_link_config(path: str | Path) -> LinkConfig:
    """A YAML/JSON file holding the ``macsec:`` mapping (or ``{macsec: {...}}``); errors name
    ``file:line: macsec.key``."""
    try:
        doc = load_yaml(read_text(path), str(path))
    except ConfigFileError as exc:
        if exc.line is None:  # unreadable: already says so
            raise
        raise ConfigFileError(exc.file, exc.line, exc.field, f"not valid YAML: {exc.message}") from None
    data = doc.value
    if isinstance(data, Mapping) and set(data) == {"macsec"}:
        data = data["macsec"]
    else:  # the keys sit at the top: name them "macsec.<key>" all the same
        doc = Doc(doc.file, data, {("macsec", *p): n for p, n in doc.lines.items()})
    return parse_link_config(data if data is not None else {}, "macsec", doc=doc, path=("macsec",))
