"""Events a :class:`~ipsecemu.macsec.mka.participant.MkaParticipant` hands to its caller.

The SA events carry exactly what the data plane needs (``MacsecSaConfig`` from
``ipsecemu.base.satypes``): install every Rx SA before the Tx SA that uses the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipsecemu.base.satypes import MacsecSaConfig


@dataclass(frozen=True)
class InstallRxSa:
    """Add this SA to the MacsecRx (frames from ``sa.sci`` under ``sa.an``); ``ki``: the key
    identifier (key server MI || KN) of its SAK."""

    sa: MacsecSaConfig
    ki: bytes = b""


@dataclass(frozen=True)
class InstallTxSa:
    """Start transmitting with this SA (replaces the current MacsecTx)."""

    sa: MacsecSaConfig
    ki: bytes = b""


@dataclass(frozen=True)
class RemoveSa:
    """Drop an SA: ``direction`` is "rx" (MacsecRx.remove_sa(sci, an)) or "tx".  ``ki``: the key
    identifier of the SAK meant; an SA under the same AN with another key must stay."""

    sci: bytes
    an: int
    direction: str
    ki: bytes = b""


@dataclass(frozen=True)
class PeerLive:
    sci: bytes
    mi: bytes


@dataclass(frozen=True)
class PeerLost:
    """A live peer was silent for longer than the life time (or restarted with a new MI)."""

    sci: bytes
    mi: bytes


@dataclass(frozen=True)
class KeyServerElected:
    """The key server changed; ``sci`` is None when there is none (no live peer)."""

    sci: bytes | None
    is_self: bool


MkaEvent = InstallRxSa | InstallTxSa | RemoveSa | PeerLive | PeerLost | KeyServerElected
