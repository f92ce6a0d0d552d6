"""Azure ``--ipsec-policy`` names (IkeEncryption, DhGroup, PfsGroup...) -> IKE and ESP proposals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ipsecemu.base.algorithms import (
    AZURE_DH_GROUP,
    AZURE_IKE_ENCRYPTION,
    AZURE_IKE_INTEGRITY,
    AZURE_IPSEC_ENCRYPTION,
    AZURE_IPSEC_INTEGRITY,
    AZURE_PFS_GROUP,
)
from ipsecemu.config.fields import Path_, _canon, _Ctx, _int, _keyed, _str, squash
from ipsecemu.ike.proposals import Proposal, ProposalError, parse_proposals


@dataclass(frozen=True)
class AzurePolicy:
    """The Azure ``--ipsec-policy`` values as given (canonical spelling)."""

    ike_encryption: str
    ike_integrity: str
    dh_group: str
    ipsec_encryption: str
    ipsec_integrity: str
    pfs_group: str
    sa_lifetime_seconds: int = 3600
    sa_datasize_kilobytes: int = 102400000


_AZURE_KEYS = _canon("ike_encryption", "ike_integrity", "dh_group", "ipsec_encryption", "ipsec_integrity",
                     "pfs_group", "sa_lifetime_seconds", "sa_datasize_kilobytes",
                     sa_life_time_seconds="sa_lifetime_seconds", sa_lifetime_in_seconds="sa_lifetime_seconds",
                     sa_data_size_kilobytes="sa_datasize_kilobytes",
                     sa_data_size_in_kilobytes="sa_datasize_kilobytes")
# The name tables are facts of the algorithm registry (ipsecemu.base.algorithms).
_AZURE_TABLES: dict[str, Mapping[str, object]] = {"ike_encryption": AZURE_IKE_ENCRYPTION, "ike_integrity": AZURE_IKE_INTEGRITY,
                 "dh_group": AZURE_DH_GROUP, "ipsec_encryption": AZURE_IPSEC_ENCRYPTION,
                 "ipsec_integrity": AZURE_IPSEC_INTEGRITY, "pfs_group": AZURE_PFS_GROUP}


def _azure_value(ctx: _Ctx, path: Path_, key: str, v: object) -> str:
    table = _AZURE_TABLES[key]
    s = _str(ctx, path, v)
    for name in table:
        if squash(name) == squash(s):
            if table[name] in ("des",):
                raise ctx.error(path, f"{name} (single DES) is not supported by ipsecemu: it is broken and our "
                                      "crypto does not implement it; use DES3, AES or GCMAES")
            return name
    raise ctx.error(path, f"must be one of {', '.join(table)}; got {s!r}")


def azure_policy(ctx: _Ctx, path: Path_, v: object) -> tuple[AzurePolicy, list[Proposal], list[Proposal]]:
    """Azure ``--ipsec-policy`` names -> (policy, IKE proposals, ESP proposals)."""
    d = _keyed(ctx, path, v, _AZURE_KEYS)
    for k in _AZURE_TABLES:
        if k not in d:
            raise ctx.error(path, f"missing {k} (Azure needs all six: {', '.join(_AZURE_TABLES)})")
    vals = {k: _azure_value(ctx, (*path, k), k, d[k]) for k in _AZURE_TABLES}
    policy = AzurePolicy(
        **vals,
        sa_lifetime_seconds=_int(ctx, (*path, "sa_lifetime_seconds"), d.get("sa_lifetime_seconds", 3600), 1),
        sa_datasize_kilobytes=_int(ctx, (*path, "sa_datasize_kilobytes"),
                                   d.get("sa_datasize_kilobytes", 102400000), 1),
    )
    ie, ii = policy.ike_encryption, policy.ike_integrity
    if ii.startswith("GCMAES") and ie != ii:
        raise ctx.error((*path, "ike_integrity"), f"{ii} requires ike_encryption {ii}, got {ie}")
    pe, pi = policy.ipsec_encryption, policy.ipsec_integrity
    if pi.startswith("GCMAES") and pe != pi:
        raise ctx.error((*path, "ipsec_integrity"), f"{pi} requires ipsec_encryption {pi}, got {pe}")
    if pe.startswith("GCMAES") and pi != pe:
        raise ctx.error((*path, "ipsec_encryption"), f"{pe} requires ipsec_integrity {pe}, got {pi}")
    dh = AZURE_DH_GROUP[policy.dh_group]
    if dh is None:
        raise ctx.error((*path, "dh_group"), "None is not possible with IKEv2 (IKE_SA_INIT always runs a "
                                             "key exchange); choose DHGroup14, DHGroup24, ECP256 or ECP384")
    ike = ike_proposal_string(ie, ii, policy.dh_group)
    # PFSMM: the Child SA uses the IKE SA's group (DHGroup14 -> PFS14, ECP384 -> ECP384, ...)
    pfs_name = policy.dh_group.replace("DHGroup", "PFS") if policy.pfs_group == "PFSMM" else policy.pfs_group
    esp = esp_proposal_string(pe, pi, pfs_name)
    try:
        return policy, parse_proposals(ike, "ike"), parse_proposals(esp, "esp")
    except ProposalError as exc:  # pragma: no cover - the tables above only produce valid strings
        raise ctx.error(path, str(exc)) from None


# ---------------------------------------------------------------- Azure's default policies
# Virtual WAN's documented DEFAULT policies, used when a connection has no custom policy, in the order
# Microsoft lists them (MicrosoftDocs/azure-docs articles/virtual-wan/virtual-wan-ipsec.md, the
# include "virtual-wan-ipsec-include.md"; ../shared/notes/azure-routing.md "VPN defaults").  Rows are
# in Azure's own policy names so the one name table above (the algorithm registry) turns them into
# proposals.  Azure offers the initiator rows; as responder it also accepts the PFS rows (a Child SA
# rekey the on-prem side starts with PFS), but never starts one with PFS itself.
VWAN_DEFAULT_IKE: tuple[tuple[str, str, str], ...] = (  # (IkeEncryption, IkeIntegrity, DhGroup)
    ("AES256", "SHA1", "DHGroup2"),
    ("AES256", "SHA256", "DHGroup2"),
    ("AES128", "SHA1", "DHGroup2"),
    ("AES128", "SHA256", "DHGroup2"),
)
VWAN_DEFAULT_ESP_INITIATOR: tuple[tuple[str, str, str], ...] = (  # (IpsecEncryption, IpsecIntegrity, PfsGroup)
    ("GCMAES256", "GCMAES256", "None"),
    ("AES256", "SHA1", "None"),
    ("AES256", "SHA256", "None"),
    ("AES128", "SHA1", "None"),
)
VWAN_DEFAULT_ESP_RESPONDER: tuple[tuple[str, str, str], ...] = (
    *VWAN_DEFAULT_ESP_INITIATOR,
    ("AES256", "SHA1", "PFS1"), ("AES256", "SHA1", "PFS2"), ("AES256", "SHA1", "PFS14"),
    ("AES128", "SHA1", "PFS1"), ("AES128", "SHA1", "PFS2"), ("AES128", "SHA1", "PFS14"),
    ("AES256", "SHA256", "PFS1"), ("AES256", "SHA256", "PFS2"), ("AES256", "SHA256", "PFS14"),
    ("AES256", "SHA1", "PFS24"), ("AES256", "SHA256", "PFS24"),
    ("AES128", "SHA256", "None"), ("AES128", "SHA256", "PFS1"), ("AES128", "SHA256", "PFS2"),
    ("AES128", "SHA256", "PFS14"),
)
VWAN_DEFAULTS_SOURCE = ("MicrosoftDocs/azure-docs articles/virtual-wan/virtual-wan-ipsec.md "
                        "(Virtual WAN default initiator/responder policies)")


def ike_proposal_string(encryption: str, integrity: str, dh_group: str) -> str:
    """One IKE proposal from Azure names, e.g. (AES256, SHA1, DHGroup2) -> ``aes256-sha1-prfsha1-modp1024``."""
    integ, prf = AZURE_IKE_INTEGRITY[integrity]
    aead = encryption.startswith("GCMAES")
    return "-".join(x for x in (AZURE_IKE_ENCRYPTION[encryption], None if aead else integ, prf,
                                AZURE_DH_GROUP[dh_group]) if x)


def esp_proposal_string(encryption: str, integrity: str, pfs_group: str) -> str:
    """One ESP proposal from Azure names, e.g. (AES256, SHA1, PFS14) -> ``aes256-sha1-modp2048``."""
    pfs = AZURE_PFS_GROUP[pfs_group]
    if pfs == "PFSMM":
        raise ValueError("PFSMM depends on the IKE group; resolve it before calling")
    return "-".join(x for x in (AZURE_IPSEC_ENCRYPTION[encryption], AZURE_IPSEC_INTEGRITY[integrity], pfs) if x)


def vwan_default_proposals(role: str = "initiator") -> tuple[list[str], list[str]]:
    """Azure Virtual WAN's default (IKE, ESP) proposals as strongSwan strings, in Azure's order.

    ``role`` "initiator": what Azure offers (no PFS); "responder": what it accepts (PFS rows too).
    """
    if role not in ("initiator", "responder"):
        raise ValueError(f"role must be initiator or responder, got {role!r}")
    esp = VWAN_DEFAULT_ESP_INITIATOR if role == "initiator" else VWAN_DEFAULT_ESP_RESPONDER
    return [ike_proposal_string(*r) for r in VWAN_DEFAULT_IKE], [esp_proposal_string(*r) for r in esp]
