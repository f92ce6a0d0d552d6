"""Rekey collisions (RFC 7296 section 2.8.1) against a real strongSwan 5.9.8 charon.

Both sides rekey the same Child SA at once, several times in a row.  To make "at once" exact
rather than a race, our CREATE_CHILD_SA is produced but held in the core until charon's own
rekey request (started over vici) arrives; both requests then cross on the wire.  Each round must
end with exactly one Child SA pair: one INSTALLED child in charon's list-sas, one Child SA in our
core and in our data plane, the same SPIs on both sides, and pings passing through it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.interop.pair import ours_vs_charon
from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
]

IKE = "aes128gcm16-prfsha256-ecp256"
ROUNDS = 3


def installed(s: Any) -> list[dict[str, Any]]:
    return [c for c in s.charon_sa().get("child-sas", {}).values() if c.get("state") == "INSTALLED"]


def one_pair(s: Any) -> bool:
    """Exactly one Child SA pair on each side, with matching SPIs (and nothing else installed)."""
    sa = s.peer.sa()
    # charon keeps a rekeyed inbound SA a few seconds (delete_rekeyed_delay): only INSTALLED counts
    kids, theirs = list(sa.children.values()), installed(s)
    if len(kids) != 1 or len(theirs) != 1:
        return False
    c = kids[0]
    fw = s.peer.forwarder
    return (int(theirs[0]["spi-in"], 16), int(theirs[0]["spi-out"], 16)) == (c.outbound_spi, c.inbound_spi) \
        and set(fw._in) == {c.inbound_spi} and [o.cfg.spi for o in fw._out] == [c.outbound_spi]


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes128gcm16-ecp256"], ids=["no-pfs", "pfs"])
def test_simultaneous_child_rekeys_leave_one_pair(unique_name: str, esp: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, esp) as s:
            await s.establish(True)
            assert (await s.pings(1)) == (1, 1)
            t = s.peer.transport
            outcomes = []
            for rnd in range(ROUNDS):
                sa = s.peer.sa()
                (old,) = sa.children.values()
                before = len(s.peer.history)
                # ours first, but held back (no pump) until charon's request comes in
                sa.rekey_child(old.inbound_spi, t.now())
                await s.charon_call(s.charon.rekey, child="net")
                assert await s.until(lambda: one_pair(s), 10), \
                    (rnd, sa.children, s.charon_sa().get("child-sas"), s.charon.log_tail(40))
                evs = s.peer.history[before:]
                rekeyed = [e for e in evs if isinstance(e, ev.ChildSaRekeyed)]
                deleted = [e for e in evs if isinstance(e, ev.ChildSaDeleted)]
                assert not [e for e in evs if isinstance(e, ev.ChildSaFailed)], evs
                assert old.inbound_spi in {d.inbound_spi for d in deleted}
                (new,) = sa.children.values()
                assert new.inbound_spi in {r.keys.inbound.spi for r in rekeyed}
                assert new.inbound_spi not in {d.inbound_spi for d in deleted}
                if len(rekeyed) == 2:
                    # a real collision: two new SAs; the old one and the redundant one deleted
                    assert len(deleted) == 2, evs
                    outcomes.append("lost" if any(d.reason == "redundant" for d in deleted) else "won")
                else:
                    # charon may refuse ours (RFC 7296 2.25: TEMPORARY_FAILURE, or CHILD_SA_NOT_FOUND when
                    # its crossing rekey already deleted the old SA) instead: also exactly one pair
                    assert len(rekeyed) == len(deleted) == 1, evs
                    outcomes.append("refused")
                assert (await s.pings(2)) == (2, 2), s.charon.log_tail(30)
                assert int(installed(s)[0]["packets-in"]) == 4  # both pings, both ways, all on the survivor
            assert not s.peer.install_errors
            # real collisions, not one-after-the-other rekeys: we saw every one of them, and charon
            # logged one "rekey collision" verdict per round that was not refused
            assert s.peer.sa().counters.get("child_rekey_collision") == ROUNDS
            want = ROUNDS - outcomes.count("refused")
            assert await s.until(lambda: s.charon.log_file.read_text().count("rekey collision") == want, 5), \
                (outcomes, [ln for ln in s.charon.log_file.read_text().splitlines() if "collision" in ln])
            assert outcomes.count("refused") < ROUNDS, outcomes  # at least one genuine collision

    asyncio.run(main())


def test_simultaneous_ike_rekey_with_charon(unique_name: str) -> None:
    """Both sides rekey the IKE SA at once (ours held back as above): one new IKE SA survives on
    both sides, the Child SA moved to it and carries traffic."""

    async def main() -> None:
        async with ours_vs_charon(unique_name, IKE, "aes128gcm16") as s:
            ike_ev, child_ev = await s.establish(True)
            t = s.peer.transport
            old = s.peer.sa()
            old.rekey_ike(t.now())
            await s.charon_call(s.charon.rekey, ike="pair")

            def settled() -> bool:
                sas = [x for x in s.peer.endpoint.sas.values() if x.state.value == "established"]
                all_theirs = s.charon.list_sas_all()
                return len(sas) == 1 and len(all_theirs) == 1 and sas[0] is not old \
                    and all_theirs[0][1].get("initiator-spi") == sas[0].spi_i.hex() \
                    and all_theirs[0][1].get("responder-spi") == sas[0].spi_r.hex()

            assert await s.until(settled, 15), (s.peer.endpoint.sas, s.charon.list_sas_all(), s.charon.log_tail(40))
            new = next(x for x in s.peer.endpoint.sas.values() if x.state.value == "established")
            assert list(new.children) == [child_ev.keys.inbound.spi]
            assert old.counters.get("rekey_collision") == 1, old.counters
            assert (await s.pings(2)) == (2, 2)
            # and the surviving IKE SA works: a Child rekey over it
            s.peer.call(new.rekey_child, child_ev.keys.inbound.spi)
            await t.wait_event(ev.ChildSaRekeyed, 8)

    asyncio.run(main())
