"""Random API calls from both peers over a lossy network, then the network heals: the two peers
must agree on what exists (same IKE SA, Child SAs paired SPI for SPI with the same keys) or both
have given up.  Hypothesis drives the sequence; everything is deterministic per example."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.loopback import Nat
from ipsecemu.ike.states import IkeState

from support.ike_pair import pair

OPS = ["rekey_child", "rekey_ike", "create_child", "delete_child", "dpd", "wait"]


def live(ep):
    return [s for s in ep.sas.values() if s.state == IkeState.ESTABLISHED]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(OPS), st.booleans(), st.floats(0, 6)), min_size=1, max_size=25),
       st.integers(0, 2**32), st.sampled_from([0.0, 0.2, 0.5]), st.sampled_from(["aes128gcm16", "aes128gcm16-ecp256"]),
       st.booleans())
def test_peers_agree_after_chaos(ops: list, seed: int, loss: float, esp: str, natted: bool) -> None:
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", esp,
                     a_kw={"child_lifetime_s": 0.0, "ike_lifetime_s": 0.0},
                     b_kw={"child_lifetime_s": 0.0, "ike_lifetime_s": 0.0},
                     nat=Nat(inside="192.0.2.1", public="198.51.100.1") if natted else None)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    rnd = random.Random(seed)
    net.filter = lambda p: rnd.random() >= loss
    for op, from_a, dt in ops:
        ep = a if from_a else b
        sas = live(ep)
        if sas and op != "wait":
            s = sas[-1]
            kids = [c for c in s.children.values() if not c.rekeyed]
            try:
                if op == "rekey_child" and kids:
                    s.rekey_child(kids[0].inbound_spi, net.now)
                elif op == "delete_child" and kids:
                    s.delete_child(kids[0].inbound_spi, net.now)
                elif op == "create_child":
                    s.create_child(net.now)
                elif op == "rekey_ike":
                    s.rekey_ike(net.now)
                elif op == "dpd":
                    s.dpd(net.now)
            except LocalProtocolError:
                pass
        net.run()
        net.advance(dt)
    net.filter = lambda p: True
    net.advance(400.0)  # retransmissions finish or give up
    la, lb = live(a), live(b)
    if not la or not lb:
        return  # a side gave up (retransmit limit under loss): acceptable, it was told so by events
    assert len(la) == len(lb) == 1
    x, y = la[0], lb[0]
    assert (x.spi_i, x.spi_r) == (y.spi_i, y.spi_r) and x.keys == y.keys
    ka = {c.inbound_spi: c for c in x.children.values()}
    kb = {c.outbound_spi: c for c in y.children.values()}
    assert set(ka) == set(kb)
    for spi, c in ka.items():
        assert c.keys.inbound == kb[spi].keys.outbound and c.keys.outbound == kb[spi].keys.inbound
