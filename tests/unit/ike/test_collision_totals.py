"""The endpoint keeps what its SAs counted (branch resil2): a simultaneous IKE rekey is counted on
the old IKE SA, which is gone once the collision is resolved; ``sa counters --json`` reads the
endpoint's ``sa_<name>`` totals instead."""

from __future__ import annotations

import random

from ipsecemu.ike.states import IkeState

from support.ike_pair import events, pair


def test_collision_counts_outlive_the_old_sas() -> None:
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16")
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    sb = b.find(sa.spi_r)
    sa._rng = random.Random(1).randbytes
    sb._rng = random.Random(101).randbytes
    old = next(iter(sa.children.values()))
    sa.rekey_child(old.inbound_spi, net.now)
    sb.rekey_child(next(iter(sb.children.values())).inbound_spi, net.now)
    net.run()
    assert a.counters["sa_child_rekey_collision"] == b.counters["sa_child_rekey_collision"] == 1
    sa.rekey_ike(net.now)
    sb.rekey_ike(net.now)
    net.run()
    assert sa.state == sb.state == IkeState.CLOSED  # replaced: their own counters are gone with them
    assert sa not in a.sas.values() and sb not in b.sas.values()
    assert a.counters["sa_rekey_collision"] == b.counters["sa_rekey_collision"] == 1
    assert a.counters["sa_child_rekey_collision"] == 1  # earlier totals are kept
    events(a), events(b)
