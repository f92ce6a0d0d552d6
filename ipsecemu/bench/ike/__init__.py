"""``ipsecemu bench ike``: IKE_SA + Child SA setups per second and latency, three pairs, one run.

Pairs (PSK, IKE ``aes128gcm16-prfsha256-<group>``, ESP ``aes128gcm16``, tunnel mode):

* ``ipsecemu-ipsecemu``: two worker processes (``python -m ipsecemu.bench.ike``) inside two
  netns joined by a veth, real UDP 500/4500 through the kernel;
* ``ipsecemu-strongswan``: our initiator worker -> charon (kernel-libipsec) as responder;
* ``strongswan-strongswan``: charon -> charon, driven over vici (K threads each blocking in
  ``initiate``), tuned for rate as notes/strongswan-netns.md says: the baseline of every ratio.

Each setup is a complete IKE_SA_INIT + IKE_AUTH carrying a Child SA; its latency runs from the
initiate call to the initiator seeing the Child SA up.  K setups are kept in flight; each IKE SA
is deleted (INFORMATIONAL) right after it came up, so state stays bounded.  A setup counts only
if the responder reported the same IKE SA (by initiator SPI) established with its Child SA too:
the ipsecemu responder reports its ``ChildSaEstablished`` events, charon its vici ``child-updown``
events.  Both peers and the driver share this machine's cores, so every rate includes the DH and
IKE work of both sides.  Our Child SAs go into the data plane (native inbound SAD + outbound SA)
and out again with their IKE SA, as charon installs them into libipsec.  The three pairs run in
``rounds`` alternating rounds; a result's ratio is the median of its per-round ratios to strongSwan
<-> strongSwan (same group and round), with min-max.

Modules: :mod:`.worker` (inside a netns), :mod:`.driver` (the parent's side of workers and charon),
:mod:`.run` (the rounds), :mod:`.report` (results, ratios, table), :mod:`.cli`.
"""

from __future__ import annotations

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.ike.cli import command
from ipsecemu.bench.ike.report import (
                                       GROUPS,
                                       PAIRS,
                                       Result,
                                       Run,
                                       format_table,
                                       ike_proposal,
                                       make_result,
                                       percentile,
                                       summarise,
)
from ipsecemu.bench.ike.run import run

__all__ = ["GROUPS", "PAIRS", "BenchError", "Result", "Run", "command", "format_table", "ike_proposal",
           "make_result", "percentile", "run", "summarise"]
