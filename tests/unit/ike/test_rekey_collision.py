"""Simultaneous IKE SA rekeys (RFC 7296 section 2.8.2) when messages of the collision are lost:
the two peers must still end with the same Child SAs, and events must say what happened."""

from __future__ import annotations

import random

from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange
from ipsecemu.ike.states import IkeState

from support.ike_pair import events, one, pair


def established():
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16")
    sa = a.initiate("c", 0.0)
    net.run()
    (sb,) = b.sas.values()
    events(a)
    events(b)
    return a, b, net, sa, sb


def dropping(*rules: tuple[tuple[bytes, bytes], tuple[str, int], int, bool]):
    """A network filter dropping the messages (IKE SA SPIs, sender, exchange, is-response) given."""

    def keep(p) -> bool:
        h = m.decode_header(p.data)
        return ((h.spi_i, h.spi_r), p.src, h.exchange, h.response) not in rules

    return keep


def test_child_delete_on_peers_new_sa_while_collision_undecided() -> None:
    """A's rekey request is lost, B's crosses it: A answers it (a collision for A), B never sees
    one and uses its new IKE SA at once to delete the Child SA.  A must delete it too, although
    its own rekey is still unanswered (the Child SAs wait on the old SA for the nonce comparison)."""
    for seed in range(4):  # nonces must not matter: B never saw a collision
        a, b, net, sa, sb = established()
        sa._rng = random.Random(seed).randbytes
        sb._rng = random.Random(seed + 100).randbytes
        old = (sa.spi_i, sa.spi_r)

        # neither A's rekey request nor B's Delete of the old SA get through until the Child SA is gone
        net.filter = dropping((old, a.local, Exchange.CREATE_CHILD_SA, False),
                              (old, b.local, Exchange.INFORMATIONAL, False))
        sa.rekey_ike(net.now)
        sb.rekey_ike(net.now)
        net.run()
        assert sa.counters["rekey_collision"] == 1 and "rekey_collision" not in sb.counters
        new_b = sb.successor
        assert new_b is not None and len(new_b.children) == 1
        (child,) = new_b.children.values()
        new_b.delete_child(child.inbound_spi, net.now)
        net.run()
        ea = events(a)
        deleted = one(ea, ev.ChildSaDeleted)
        assert (deleted.inbound_spi, deleted.reason) == (child.outbound_spi, "remote")
        # B's use of its new SA decided the collision: announced as the rekey, before the delete
        rekeyed = one(ea, ev.IkeSaRekeyed)
        assert rekeyed.new_spi_i == new_b.spi_i and ea.index(rekeyed) < ea.index(deleted)
        net.filter = lambda p: True
        net.advance(400.0)
        (x,), (y,) = a.sas.values(), b.sas.values()
        assert (x.spi_i, x.spi_r) == (y.spi_i, y.spi_r) == (new_b.spi_i, new_b.spi_r)
        assert x.state == y.state == IkeState.ESTABLISHED and x.keys == y.keys
        assert x.children == y.children == {}
        ea = events(a)
        assert not [e for e in ea if isinstance(e, ev.ChildSaDeleted | ev.ChildSaEstablished)]
        # B refused A's late rekey (its old SA was being deleted): A's own new SA never existed
        assert [e.reason for e in ea if isinstance(e, ev.IkeSaDeleted)] == ["rekeyed"]


def test_collision_won_but_answer_never_arrives() -> None:
    """Our exchange wins on nonces, the peer retires its redundant new SA, but its answer to our
    request never reaches us: our new SA does not exist here, so the Child SAs are gone and the
    events must say so (not "rekeyed" into the SA the peer just deleted)."""
    seen = 0
    for seed in range(8):
        a, b, net, sa, sb = established()
        sa._rng = random.Random(seed).randbytes
        sb._rng = random.Random(seed + 100).randbytes
        old = (sa.spi_i, sa.spi_r)
        (child,) = sa.children.values()
        net.filter = dropping((old, b.local, Exchange.CREATE_CHILD_SA, True))
        sa.rekey_ike(net.now)
        sb.rekey_ike(net.now)
        net.run()
        net.advance(400.0)
        if "rekey_collision_won" in sb.counters:
            continue  # B's exchange won: its Delete of the old SA settles everything
        seen += 1
        assert "rekey_collision_lost" in sb.counters
        assert not [s for s in a.sas.values() if s.state != IkeState.CLOSED]
        ea = events(a)
        gone = one(ea, ev.ChildSaDeleted)
        assert (gone.inbound_spi, gone.reason) == (child.inbound_spi, "timeout")
        assert [e.reason for e in ea if isinstance(e, ev.IkeSaDeleted)] == ["rekeyed", "timeout"]
    assert seen
