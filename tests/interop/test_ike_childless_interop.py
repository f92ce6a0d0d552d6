"""Childless IKE SAs (RFC 6023) against a real strongSwan 5.9.8 charon, both roles, checked
through vici: the IKE SA is ESTABLISHED without a CHILD_SA first, then the Child SA comes by
CREATE_CHILD_SA and carries pings through our ESP and charon's libipsec."""

from __future__ import annotations

import asyncio

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.interop.pair import ours_vs_charon
from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()

pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]

FAST = "aes128gcm16-prfsha256-ecp256"


@pytest.mark.parametrize("mode", ["allow-then-create", "force"])
def test_we_initiate_childless(unique_name: str, mode: str) -> None:
    async def main() -> None:
        ours = {"childless": "force"} if mode == "force" else {}
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ours_kw=ours) as s:
            t = s.peer.transport
            if mode == "force":
                s.peer.initiate("pair")
            else:
                s.peer.endpoint.initiate("pair", t.now(), None, False)
                t.pump()
            ike_ev = await t.wait_event(lambda e: isinstance(e, ev.IkeSaEstablished | ev.IkeSaDeleted), 10)
            assert isinstance(ike_ev, ev.IkeSaEstablished), ike_ev
            sa = s.peer.sa()
            assert sa.childless_ok
            if mode != "force":
                # charon: IKE SA up, no CHILD_SA at all, and it stays so
                assert await s.until(lambda: s.charon_sa().get("state") == "ESTABLISHED")
                await asyncio.sleep(0.5)
                assert not s.charon_sa().get("child-sas") and not sa.children
                s.peer.call(sa.create_child)
            child_ev = await t.wait_event(lambda e: isinstance(e, ev.ChildSaEstablished | ev.ChildSaFailed), 10)
            assert isinstance(child_ev, ev.ChildSaEstablished), child_ev
            assert await s.until(lambda: bool(s.charon_child())), s.charon.log_tail()
            s.check_same_sa(ike_ev, child_ev)
            log = s.charon.log_tail(200)
            # charon saw an IKE_AUTH without Child payloads, then the Child SA by CREATE_CHILD_SA
            assert "parsed IKE_AUTH request 1 [ IDi IDr AUTH" in log and "SA TSi TSr" not in \
                log.split("parsed IKE_AUTH request 1")[1].splitlines()[0], log
            assert "parsed CREATE_CHILD_SA request 2" in log, log
            assert (await s.pings(2)) == (2, 2)

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["allow-then-create", "force"])
def test_charon_initiates_childless(unique_name: str, mode: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16",
                                  charon_kw={"childless": "force" if mode == "force" else "allow"}) as s:
            t = s.peer.transport
            if mode == "force":
                # one vici initiate: charon sends IKE_AUTH without SA/TS, then CREATE_CHILD_SA
                await s.charon_call(s.charon.initiate, child="net", ike="pair", timeout_ms=10000)
            else:
                await s.charon_call(s.charon.initiate, ike="pair", timeout_ms=10000)
            ike_ev = await t.wait_event(lambda e: isinstance(e, ev.IkeSaEstablished | ev.IkeSaDeleted), 10)
            assert isinstance(ike_ev, ev.IkeSaEstablished), ike_ev
            sa = s.peer.sa()
            assert not sa.initiator and sa.childless_ok and sa.counters.get("childless") == 1
            if mode != "force":
                assert s.charon_sa().get("state") == "ESTABLISHED" and not s.charon_sa().get("child-sas")
                assert not sa.children
                # vici's initiate of a child would start a second IKE SA: the child comes from us,
                # CREATE_CHILD_SA from the IKE responder, on charon's childless IKE SA
                s.peer.call(sa.create_child)
            child_ev = await t.wait_event(lambda e: isinstance(e, ev.ChildSaEstablished | ev.ChildSaFailed), 10)
            assert isinstance(child_ev, ev.ChildSaEstablished), child_ev
            assert await s.until(lambda: bool(s.charon_child())), s.charon.log_tail()
            assert len(s.charon_sa().get("child-sas", {})) == 1 and len(sa.children) == 1
            assert len(s.charon.list_sas_all()) == 1 and len(s.peer.endpoint.sas) == 1
            assert (await s.pings(2)) == (2, 2)

    asyncio.run(main())
