"""MACsec Key Agreement (IEEE 802.1X-2010/2020) with a pre-shared CAK, sans-I/O.

``kdf`` (key hierarchy), ``mkpdu`` (EAPOL-MKA codec), ``participant`` (the protocol) and
``events`` (what the participant asks the data plane to do).
"""

from ipsecemu.macsec.mka.events import (
    InstallRxSa,
    InstallTxSa,
    KeyServerElected,
    MkaEvent,
    PeerLive,
    PeerLost,
    RemoveSa,
)
from ipsecemu.macsec.mka.kdf import MkaKeyError
from ipsecemu.macsec.mka.mkpdu import MkpduError, parse_frame
from ipsecemu.macsec.mka.participant import MkaCounters, MkaParticipant

__all__ = [
    "InstallRxSa",
    "InstallTxSa",
    "KeyServerElected",
    "MkaCounters",
    "MkaEvent",
    "MkaKeyError",
    "MkaParticipant",
    "MkpduError",
    "PeerLive",
    "PeerLost",
    "RemoveSa",
    "parse_frame",
]
