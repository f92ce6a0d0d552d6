"""IKEv2 transform lookups over the algorithm registry (:mod:`ipsecemu.base.algorithms`).

The tables (one per transform type, keyed by the strongSwan proposal keyword: ``aes256``,
``aes128gcm16``, ``prfsha384``, ``ecp384``, ...) live in the registry; this module resolves keywords
and (type, IANA ID[, key length]) triples to their entries for the IKE core.

Stable API (imported by the IKE core):

* :class:`TransformType`, :data:`ENCR`, :data:`PRF`, :data:`INTEG`, :data:`KE`, :data:`ESN`
* :func:`encr_by_id`, :func:`prf_by_id`, :func:`integ_by_id`, :func:`ke_by_id`, :func:`esn_by_id`
* :func:`lookup` (keyword -> (type, entry)), :func:`keyword_for`
"""

from __future__ import annotations

from collections.abc import Mapping

from ipsecemu.base.algorithms import (
    ATTR_KEY_LENGTH,
    ENCR,
    ENCR_ALIASES,
    ENCR_LIST,
    ESN,
    INTEG,
    INTEG_ALIASES,
    INTEG_LIST,
    INTEG_NONE,
    KE,
    KE_ALIASES,
    KE_LIST,
    KE_NONE,
    PRF,
    PRF_LIST,
    EncrAlg,
    EsnAlg,
    IntegAlg,
    KeGroup,
    PrfAlg,
    TransformType,
)

__all__ = [
    "ATTR_KEY_LENGTH", "ENCR", "ENCR_ALIASES", "ESN", "INTEG", "INTEG_ALIASES", "INTEG_NONE", "KE", "KE_ALIASES",
    "KE_NONE", "PRF", "Alg", "EncrAlg", "EsnAlg", "IntegAlg", "KeGroup", "PrfAlg", "TransformType", "by_id",
    "encr_by_id", "esn_by_id", "integ_by_id", "ke_by_id", "keyword_for", "lookup", "prf_by_id",
]

Alg = EncrAlg | PrfAlg | IntegAlg | KeGroup | EsnAlg

_TABLES: dict[TransformType, tuple[Mapping[str, Alg], dict[str, str]]] = {
    TransformType.ENCR: (ENCR, ENCR_ALIASES),
    TransformType.PRF: (PRF, {}),
    TransformType.INTEG: (INTEG, INTEG_ALIASES),
    TransformType.KE: (KE, KE_ALIASES),
    TransformType.ESN: (ESN, {}),
}



def lookup(keyword: str) -> tuple[TransformType, Alg] | None:
    """Resolve one strongSwan proposal keyword (case-insensitive, aliases included)."""
    kw = keyword.strip().lower()
    for ttype, (table, aliases) in _TABLES.items():
        kw2 = aliases.get(kw, kw)
        if kw2 in table:
            return ttype, table[kw2]
    return None


def encr_by_id(alg_id: int, key_bits: int | None = None) -> EncrAlg | None:
    """The ENCR entry for an IANA ID and Key Length attribute (None if we do not support it).

    Ciphers with a fixed key size (3DES, NULL, ChaCha20) accept no attribute; AES needs one.
    """
    for e in ENCR_LIST:
        if e.id == alg_id and e.key_bits == key_bits:
            return e
    return None


def prf_by_id(alg_id: int) -> PrfAlg | None:
    return next((p for p in PRF_LIST if p.id == alg_id), None)


def integ_by_id(alg_id: int) -> IntegAlg | None:
    if alg_id == 0:
        return INTEG_NONE
    return next((i for i in INTEG_LIST if i.id == alg_id), None)


def ke_by_id(alg_id: int) -> KeGroup | None:
    if alg_id == 0:
        return KE_NONE
    return next((g for g in KE_LIST if g.id == alg_id), None)


def esn_by_id(alg_id: int) -> EsnAlg | None:
    return next((e for e in ESN.values() if e.id == alg_id), None)


def by_id(ttype: int, alg_id: int, key_bits: int | None = None) -> Alg | None:
    """Generic lookup by (transform type, IANA ID[, key length])."""
    if ttype not in TransformType._value2member_map_:
        return None
    match TransformType(ttype):
        case TransformType.ENCR:
            return encr_by_id(alg_id, key_bits)
        case TransformType.PRF:
            return prf_by_id(alg_id)
        case TransformType.INTEG:
            return integ_by_id(alg_id)
        case TransformType.KE:
            return ke_by_id(alg_id)
        case TransformType.ESN:
            return esn_by_id(alg_id)
    return None  # pragma: no cover


def keyword_for(ttype: int, alg_id: int, key_bits: int | None = None) -> str:
    """strongSwan keyword for a transform, or a readable placeholder for unknown ones."""
    alg = by_id(ttype, alg_id, key_bits)
    if alg is not None:
        return alg.keyword
    name = TransformType(ttype).name if ttype in TransformType._value2member_map_ else f"T{ttype}"
    suffix = f"_{key_bits}" if key_bits else ""
    return f"{name.lower()}{alg_id}{suffix}"
