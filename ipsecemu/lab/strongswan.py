"""Former home of the strongSwan glue, now split into :mod:`ipsecemu.strongswan` (charon, vici, conn,
keylog) and :mod:`ipsecemu.lab.harness` (test/bench topologies).

Only bench/ (owned by the bench helper this round) still imports these names from here; once it
imports from the new modules this file goes.  Nothing else may import it.
"""

from ipsecemu.lab.harness import (
    CharonPair,
    PairTopology,
    StarTopology,
    charon_pair,
    pair_conn,
    pair_topology,
    ping,
)
from ipsecemu.strongswan.charon import CHARON, Charon, CharonError, charon_available
from ipsecemu.strongswan.conn import Child, Conn
from ipsecemu.strongswan.keylog import KeyLog, parse_keys, wireshark_esp_sa, wireshark_ikev2

__all__ = [
    "CHARON", "Charon", "CharonError", "CharonPair", "Child", "Conn", "KeyLog", "PairTopology", "StarTopology",
    "charon_available", "charon_pair", "pair_conn", "pair_topology", "parse_keys", "ping", "wireshark_esp_sa",
    "wireshark_ikev2",
]
