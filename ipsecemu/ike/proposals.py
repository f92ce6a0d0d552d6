"""IKE/ESP proposals: strongSwan proposal strings <-> transforms, and RFC 7296 §2.7 selection.

``parse_proposals("aes256gcm16-prfsha384-ecp384", "ike")`` follows strongSwan's rules:

* tokens are joined with ``-``, proposals with ``,``; several algorithms of one type in one
  proposal are alternatives (``aes128-aes256-sha256-sha1-modp2048-ecp256``);
* IKE without an explicit PRF gets one PRF per integrity algorithm (sha256 -> prfsha256);
  an AEAD-only IKE proposal must name its PRF;
* AEAD and classic ciphers cannot share one proposal; an ESP proposal without ``esn``/``noesn``
  means ``noesn``; integrity algorithms next to an AEAD cipher are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipsecemu.base.errors import ConfigError
from ipsecemu.ike.transforms import (
    ENCR,
    ESN,
    INTEG,
    KE,
    PRF,
    Alg,
    EncrAlg,
    EsnAlg,
    IntegAlg,
    KeGroup,
    PrfAlg,
    TransformType,
    by_id,
    keyword_for,
    lookup,
)

PROTOCOLS = ("ike", "esp")
#: IANA Security Protocol IDs (RFC 7296 §3.3.1)
PROTOCOL_IDS = {"ike": 1, "esp": 3}

_TYPE_ORDER = (TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.KE,
               TransformType.ESN)
# strongSwan prints integrity before the PRF
_DISPLAY_ORDER = (TransformType.ENCR, TransformType.INTEG, TransformType.PRF, TransformType.KE,
                  TransformType.ESN)


class ProposalError(ConfigError):
    """A proposal string is invalid; the message names the offending token."""


@dataclass(frozen=True, order=True)
class Transform:
    """One transform substructure: type, IANA ID and (for AES) the Key Length attribute in bits."""

    type: int
    id: int
    key_length: int | None = None

    @property
    def alg(self) -> Alg | None:
        """The registry entry, or None for a transform ipsecemu does not implement."""
        if self.type not in TransformType._value2member_map_:
            return None
        return by_id(self.type, self.id, self.key_length)

    @property
    def keyword(self) -> str:
        return keyword_for(self.type, self.id, self.key_length)

    @classmethod
    def of(cls, alg: Alg) -> Transform:
        if isinstance(alg, EncrAlg):
            return cls(TransformType.ENCR, alg.id, alg.key_bits)
        ttype = {PrfAlg: TransformType.PRF, IntegAlg: TransformType.INTEG, KeGroup: TransformType.KE,
                 EsnAlg: TransformType.ESN}[type(alg)]
        return cls(ttype, alg.id)


@dataclass(frozen=True)
class Proposal:
    """A proposal: protocol and its transforms (several per type = alternatives).

    After :func:`select` there is exactly one transform per type present; the convenience
    properties (``encr``, ``prf``, ...) return the first transform of each type.
    """

    protocol: str  # "ike" | "esp"
    transforms: tuple[Transform, ...]
    number: int = 1  # proposal number on the wire (1-based)
    spi: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ProposalError(f"protocol: must be 'ike' or 'esp', got {self.protocol!r}")

    def of_type(self, ttype: int) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == ttype)

    def _first(self, ttype: int) -> Alg | None:
        ts = self.of_type(ttype)
        return ts[0].alg if ts else None

    @property
    def encr(self) -> EncrAlg | None:
        alg = self._first(TransformType.ENCR)
        return alg if isinstance(alg, EncrAlg) else None

    @property
    def prf(self) -> PrfAlg | None:
        alg = self._first(TransformType.PRF)
        return alg if isinstance(alg, PrfAlg) else None

    @property
    def integ(self) -> IntegAlg | None:
        """Integrity algorithm; None when absent or INTEG NONE (AEAD)."""
        alg = self._first(TransformType.INTEG)
        return alg if isinstance(alg, IntegAlg) and alg.id != 0 else None

    @property
    def ke(self) -> KeGroup | None:
        """Key exchange group; None when absent or KE NONE (no PFS)."""
        alg = self._first(TransformType.KE)
        return alg if isinstance(alg, KeGroup) and alg.id != 0 else None

    @property
    def esn(self) -> bool:
        alg = self._first(TransformType.ESN)
        return bool(isinstance(alg, EsnAlg) and alg.enabled)

    @property
    def is_aead(self) -> bool:
        e = self.encr
        return bool(e and e.aead)

    def esp_dataplane(self) -> tuple[str, str | None, bool]:
        """(ESP_ENCR name, ESP_INTEG name or None, esn) for an ``EspSaConfig`` of a selected proposal."""
        e = self.encr
        if self.protocol != "esp" or e is None or e.esp_name is None:
            raise ProposalError(f"proposal {self.to_strongswan_string()!r} has no ESP data-plane mapping")
        i = self.integ
        return e.esp_name, (i.esp_name if i is not None and not e.aead else None), self.esn

    def to_strongswan_string(self) -> str:
        """strongSwan proposal keywords, e.g. ``aes256gcm16-prfsha384-ecp384`` (parses back)."""
        words: list[str] = []
        for ttype in _DISPLAY_ORDER:
            for t in self.of_type(ttype):
                if ttype in (TransformType.INTEG, TransformType.KE) and t.id == 0:
                    continue  # NONE has no keyword; absence means the same to strongSwan
                if ttype == TransformType.ESN and t.id == 0 and len(self.of_type(ttype)) == 1:
                    continue  # noesn is strongSwan's implicit default
                words.append(t.keyword)
        return "-".join(words)

    def to_swanctl_string(self) -> str:
        """What ``swanctl --list-sas`` prints: ``AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048``."""
        parts: list[str] = []
        for ttype in _DISPLAY_ORDER:
            for t in self.of_type(ttype):
                alg = t.alg
                if alg is None:
                    parts.append(t.keyword.upper())
                    continue
                if ttype == TransformType.ESN and t.id == 0 or ttype in (TransformType.INTEG,
                                                                         TransformType.KE) and t.id == 0:
                    continue
                name = alg.swan_name
                if isinstance(alg, EncrAlg) and alg.key_bits:
                    name = f"{name}-{alg.key_bits}"
                parts.append(name)
        return "/".join(parts)


# ---------------------------------------------------------------- parsing
def parse_proposal(text: str, protocol: str, *, number: int = 1) -> Proposal:
    """Parse one strongSwan proposal (no commas)."""
    if protocol not in PROTOCOLS:
        raise ProposalError(f"protocol: must be 'ike' or 'esp', got {protocol!r}")
    tokens = [t.strip() for t in text.strip().split("-")]
    if not text.strip():
        raise ProposalError(f"{protocol} proposal is empty")
    found: dict[TransformType, list[Alg]] = {t: [] for t in TransformType}
    for tok in tokens:
        hit = lookup(tok)
        if hit is None:
            raise ProposalError(
                f"{protocol} proposal {text!r}: unknown algorithm {tok!r} "
                f"(encryption: {', '.join(ENCR)}; integrity: {', '.join(INTEG)}; prf: {', '.join(PRF)}; "
                f"dh: {', '.join(KE)}; {', '.join(ESN)})"
            )
        ttype, alg = hit
        if alg not in found[ttype]:
            found[ttype].append(alg)
    _check(text, protocol, found)
    transforms = tuple(Transform.of(a) for ttype in _TYPE_ORDER for a in found[ttype])
    return Proposal(protocol, transforms, number)


def _check(text: str, protocol: str, found: dict[TransformType, list[Alg]]) -> None:
    encrs = [a for a in found[TransformType.ENCR] if isinstance(a, EncrAlg)]  # all of them: parsed as ENCR
    where = f"{protocol} proposal {text!r}"
    if not encrs:
        raise ProposalError(f"{where}: an encryption algorithm is required")
    aead = [e.keyword for e in encrs if e.aead]
    classic = [e.keyword for e in encrs if not e.aead]
    if aead and classic:
        raise ProposalError(
            f"{where}: AEAD ({', '.join(aead)}) and classic ({', '.join(classic)}) ciphers cannot share "
            "one proposal; separate them with a comma"
        )
    if protocol == "ike":
        bad = [e.keyword for e in encrs if not e.ike_ok]
        if bad:
            raise ProposalError(f"{where}: {', '.join(bad)} is not allowed in IKE proposals")
        if found[TransformType.ESN]:
            raise ProposalError(f"{where}: {found[TransformType.ESN][0].keyword} applies to ESP only")
        if classic and not found[TransformType.INTEG]:
            raise ProposalError(f"{where}: {classic[0]} needs an integrity algorithm (e.g. sha256)")
        if aead:
            found[TransformType.INTEG].clear()
        if not found[TransformType.PRF]:
            if aead:
                raise ProposalError(
                    f"{where}: {aead[0]} is AEAD, so the PRF must be explicit (e.g. {aead[0]}-prfsha256-...)"
                )
            # strongSwan derives one PRF per integrity algorithm, in the same order
            for i in found[TransformType.INTEG]:
                prf = PRF.get(f"prf{i.keyword}")
                if prf is None:
                    raise ProposalError(f"{where}: no PRF matches integrity {i.keyword}; add e.g. prfsha256")
                if prf not in found[TransformType.PRF]:
                    found[TransformType.PRF].append(prf)
        if not found[TransformType.KE]:
            raise ProposalError(f"{where}: IKE proposals need a DH group (e.g. modp2048, ecp256, x25519)")
    else:
        if found[TransformType.PRF]:
            raise ProposalError(f"{where}: {found[TransformType.PRF][0].keyword} is an IKE PRF, not valid in ESP")
        if aead:
            found[TransformType.INTEG].clear()  # as strongSwan: the AEAD tag is the integrity check
        elif not found[TransformType.INTEG]:
            raise ProposalError(
                f"{where}: {classic[0]} needs an integrity algorithm (ESP without integrity is not supported)"
            )
        if not found[TransformType.ESN]:
            found[TransformType.ESN].append(ESN["noesn"])


def parse_proposals(text: str, protocol: str) -> list[Proposal]:
    """Parse a comma-separated list of strongSwan proposals, numbered 1, 2, ..."""
    parts = [p for p in (s.strip() for s in text.split(","))]
    if not text.strip() or any(not p for p in parts):
        raise ProposalError(f"{protocol} proposals {text!r}: empty proposal in the list")
    return [parse_proposal(p, protocol, number=n) for n, p in enumerate(parts, 1)]


# ---------------------------------------------------------------- selection (RFC 7296 §2.7)
def _normalized(p: Proposal) -> dict[int, list[Transform]]:
    """Transforms per type; INTEG NONE is dropped (same as absent), ESP without ESN means noesn."""
    out: dict[int, list[Transform]] = {}
    for t in p.transforms:
        if t.type == TransformType.INTEG and t.id == 0:
            continue
        out.setdefault(t.type, []).append(t)
    if p.protocol == "esp" and TransformType.ESN not in out:
        out[TransformType.ESN] = [Transform(TransformType.ESN, 0)]
    return out


def _match(mine: Proposal, theirs: Proposal, prefer_offered: bool) -> Proposal | None:
    if mine.protocol != theirs.protocol:
        return None
    a, b = _normalized(mine), _normalized(theirs)
    if any(t not in TransformType._value2member_map_ for t in b):
        return None  # RFC 7296 §3.3.6: a proposal with an unknown transform type is rejected
    chosen: list[Transform] = []
    for ttype in _TYPE_ORDER:
        ours, offered = a.get(ttype, []), b.get(ttype, [])
        if not ours and not offered:
            continue
        if ttype == TransformType.KE:
            # a missing KE transform means "no PFS" = KE NONE (ESP only; IKE always has one)
            ours = ours or [Transform(ttype, 0)]
            offered = offered or [Transform(ttype, 0)]
        first, second = (offered, ours) if prefer_offered else (ours, offered)
        pick = next((t for t in first if t in second), None)
        if pick is None:
            return None
        if not (ttype == TransformType.KE and pick.id == 0 and TransformType.KE not in b):
            chosen.append(pick)
    return Proposal(theirs.protocol, tuple(chosen), theirs.number, theirs.spi)


def select(local: list[Proposal], offered: list[Proposal], *, prefer_offered: bool = False) -> Proposal | None:
    """Responder side of RFC 7296 §2.7: pick one offered proposal and one transform per type.

    By default our own order of preference wins (strongSwan's default); with ``prefer_offered``
    the initiator's order does.  The result keeps the offered proposal's number and SPI, so it
    can be sent back as is.  None means NO_PROPOSAL_CHOSEN.
    """
    if prefer_offered:
        pairs = ((mine, theirs) for theirs in offered for mine in local)
    else:
        pairs = ((mine, theirs) for mine in local for theirs in offered)
    for mine, theirs in pairs:
        got = _match(mine, theirs, prefer_offered)
        if got is not None:
            return got
    return None


def check_selected(offered: list[Proposal], answer: Proposal) -> bool:
    """Initiator side: the responder's single proposal must be a subset of the one we offered
    with that number and carry exactly one transform per type (RFC 7296 §2.7)."""
    mine = next((p for p in offered if p.number == answer.number and p.protocol == answer.protocol), None)
    if mine is None:
        return False
    types = [t.type for t in answer.transforms]
    if len(types) != len(set(types)):
        return False
    allowed = _normalized(mine)
    encr = answer.of_type(TransformType.ENCR)
    aead = bool(encr) and isinstance(encr[0].alg, EncrAlg) and encr[0].alg.aead
    for t in answer.transforms:
        if t.type == TransformType.INTEG and t.id == 0:
            if aead:
                continue  # INTEG NONE is what an AEAD cipher means; a classic cipher needs one
            return False
        if t.type == TransformType.KE and t.id == 0 and TransformType.KE not in allowed:
            continue
        if t not in allowed.get(t.type, []):
            return False
    # every type we required must be answered (ESP ESN defaults to noesn, KE may be omitted if NONE offered)
    answered = {t.type for t in answer.transforms}
    for ttype, ts in allowed.items():
        if ttype in answered:
            continue
        if ttype == TransformType.ESN and Transform(ttype, 0) in ts:
            continue
        if ttype == TransformType.KE and Transform(ttype, 0) in ts:
            continue
        return False
    return True
