"""ipsecemu's IKE core against a real strongSwan 5.9.8 charon (kernel-libipsec) in a netns.

Left gateway: ipsecemu (IkeEndpoint + asyncio transport + tun forwarder).  Right gateway:
charon.  Each case is checked through vici (ESTABLISHED/INSTALLED, the same IKE and ESP SPIs,
the same algorithms) and by data: pings between the inside hosts pass through our ESP and
charon's libipsec both ways, and charon's own packet counters see them.
"""

from __future__ import annotations

import asyncio

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike.endpoint import IkeEndpoint  # noqa: F401 - presence check
from ipsecemu.interop.pair import DEFAULT_CASES, PSK, InteropMismatch, ours_vs_charon, run_case
from ipsecemu.lab.harness import pair_conn
from ipsecemu.lab.netns import aping
from ipsecemu.strongswan.charon import CharonError, charon_available

NO_CHARON = charon_available()

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
]

# IKE proposal -> charon's dh-group name
DH = {
    "aes256-sha256-modp1024": "MODP_1024",
    "aes256-sha256-modp2048": "MODP_2048",
    "aes128-sha1-modp2048": "MODP_2048",
    "aes256gcm16-prfsha384-ecp384": "ECP_384",
    "aes128gcm16-prfsha256-ecp256": "ECP_256",
    "aes256-sha384-x25519": "CURVE_25519",
}
FAST = "aes128gcm16-prfsha256-ecp256"


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
@pytest.mark.parametrize("ike", list(DEFAULT_CASES))
def test_establish_and_ping(unique_name: str, ike: str, we_initiate: bool) -> None:
    esp, dh = DEFAULT_CASES[ike], DH[ike]

    async def main() -> None:
        async with ours_vs_charon(unique_name, ike, esp, key_log=True) as s:
            ike_ev, child_ev = await s.establish(we_initiate)
            s.check_same_sa(ike_ev, child_ev)
            assert s.charon_sa()["dh-group"] == dh
            s.check_same_keys(child_ev)
            assert (await s.pings(3)) == (3, 3), (dict(s.peer.forwarder.counters), s.charon.log_tail())
            child = s.charon_child()
            assert int(child["packets-in"]) == 6 and int(child["packets-out"]) == 6
            assert s.peer.forwarder.counters["decap_ok"] == 6
            assert not s.peer.install_errors

    asyncio.run(main())


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_delete_child_then_ike(unique_name: str, who: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16") as s:
            _ike_ev, child_ev = await s.establish(True)
            t = s.peer.transport
            if who == "ours":
                sa = s.peer.sa()
                s.peer.call(sa.delete_child, child_ev.keys.inbound.spi)
            else:
                await s.charon_call(s.charon.terminate, child="net")
            deleted = await t.wait_event(ev.ChildSaDeleted, 8)
            assert deleted.inbound_spi == child_ev.keys.inbound.spi
            assert await s.until(lambda: s.charon_sa().get("state") == "ESTABLISHED" and not s.charon_child())
            assert (await s.pings(1)) == (0, 0)  # no CHILD_SA: nothing passes
            if who == "ours":
                s.peer.call(s.peer.sa().delete)
            else:
                await s.charon_call(s.charon.terminate, ike="pair")
            gone = await t.wait_event(ev.IkeSaDeleted, 8)
            assert gone.reason == ("local" if who == "ours" else "remote")
            assert await s.until(lambda: not s.charon.list_sas())

    asyncio.run(main())


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_rekey_child(unique_name: str, who: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16") as s:
            _ike_ev, child_ev = await s.establish(who == "charon")
            old_in = child_ev.keys.inbound.spi
            assert (await s.pings(1)) == (1, 1)
            if who == "ours":
                s.peer.call(s.peer.sa().rekey_child, old_in)
            else:
                await s.charon_call(s.charon.rekey, child="net")
            rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
            assert rekeyed.old_inbound_spi == old_in and rekeyed.keys.inbound.spi != old_in
            await s.peer.transport.wait_event(ev.ChildSaDeleted, 8)
            new_out = rekeyed.keys.outbound.spi
            assert await s.until(lambda: int(s.charon_child().get("spi-in", "0"), 16) == new_out
                                 and len(s.charon_sa().get("child-sas", {})) == 1)
            assert (await s.pings(2)) == (2, 2)
            assert int(s.charon_child()["packets-in"]) == 4  # all on the new SA

    asyncio.run(main())


@pytest.mark.parametrize("who", ["ours", "charon"])
def test_rekey_ike(unique_name: str, who: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16") as s:
            ike_ev, _child_ev = await s.establish(True)
            if who == "ours":
                s.peer.call(s.peer.sa().rekey_ike)
            else:
                await s.charon_call(s.charon.rekey, ike="pair")
            rekeyed = await s.peer.transport.wait_event(ev.IkeSaRekeyed, 8)
            assert (rekeyed.new_spi_i, rekeyed.new_spi_r) != (ike_ev.ike_spi_i, ike_ev.ike_spi_r)
            assert await s.until(lambda: s.charon_sa().get("initiator-spi") == rekeyed.new_spi_i.hex()
                                 and len(s.charon.list_sas_all()) == 1)
            assert s.charon_sa()["responder-spi"] == rekeyed.new_spi_r.hex()
            # the CHILD_SA moved to the new IKE SA and still carries traffic
            assert (await s.pings(2)) == (2, 2)
            # the new IKE SA works: a CHILD rekey over it succeeds
            await s.charon_call(s.charon.rekey, child="net")
            await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)

    asyncio.run(main())


def test_dpd_from_charon_is_answered(unique_name: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", charon_kw={"dpd_delay": 1}) as s:
            await s.establish(True)

            def log() -> str:
                return s.charon.log_file.read_text()

            # charon probes an idle SA every second; wait for two rounds
            assert await s.until(lambda: log().count("sending DPD request") >= 2, 6), log()[-2000:]
            await asyncio.sleep(0.2)
            text = log()
            # every probe was answered at once: as many INFORMATIONAL responses, no retransmission
            assert text.count("parsed INFORMATIONAL response") >= 2
            assert "retransmit" not in text
            assert s.charon_sa().get("state") == "ESTABLISHED"
            assert not any(isinstance(e, ev.IkeSaDeleted) for e in s.peer.history)

    asyncio.run(main())


def test_our_dpd_alive_and_dead_peer(unique_name: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16",
                                  ours_kw={"retransmit_timeout_s": 0.3, "retransmit_tries": 2}) as s:
            await s.establish(True)
            sa = s.peer.sa()
            before = s.peer.transport.counters["ike_in"]
            s.peer.call(sa.dpd)
            await asyncio.sleep(0.5)
            assert s.peer.transport.counters["ike_in"] == before + 1  # charon answered
            assert not any(isinstance(e, ev.IkeSaDeleted) for e in s.peer.history)
            s.charon.kill()
            s.peer.call(sa.dpd)
            gone = await s.peer.transport.wait_event(ev.IkeSaDeleted, 10)
            assert gone.reason in ("dpd", "timeout")

    asyncio.run(main())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_wrong_psk_fails_cleanly(unique_name: str, we_initiate: bool) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ours_kw={"psk": b"not-the-psk"}) as s:
            if we_initiate:
                s.peer.initiate("pair")
            else:
                with pytest.raises(CharonError):
                    await s.charon_call(s.charon.initiate, child="net", ike="pair", timeout_ms=3000)
            gone = await s.peer.transport.wait_event(ev.IkeSaDeleted, 8)
            assert gone.reason == "auth_failed"
            assert not any(isinstance(e, ev.ChildSaEstablished) for e in s.peer.history)
            assert await s.until(lambda: not s.charon.list_sas())
            assert s.peer.transport.counters["driver_error"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("ours_ike,ours_esp,expect", [
    ("aes256-sha256-modp2048", "aes128gcm16", "no_proposal"),  # IKE proposals do not meet
    (FAST, "aes256-sha256", "child_failed"),  # ESP proposals do not meet
    (FAST, "aes128gcm16-esn", "child_failed"),  # libipsec has no ESN: charon refuses
])
def test_proposal_mismatch(unique_name: str, ours_ike: str, ours_esp: str, expect: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ours_kw={"ike": ours_ike, "esp": ours_esp}) as s:
            s.peer.initiate("pair")
            if expect == "no_proposal":
                gone = await s.peer.transport.wait_event(ev.IkeSaDeleted, 8)
                assert gone.reason == "no_proposal"
                assert await s.until(lambda: not s.charon.list_sas())
            else:
                failed = await s.peer.transport.wait_event(lambda e: isinstance(e, ev.ChildSaFailed
                                                                                | ev.ChildSaEstablished), 8)
                assert isinstance(failed, ev.ChildSaFailed)
                # the IKE SA itself stands on both sides, without a CHILD_SA
                assert await s.until(lambda: s.charon_sa().get("state") == "ESTABLISHED")
                assert not s.charon_sa().get("child-sas")
            assert (await aping(s.topo.hosts[0], s.topo.inside[1], 1)) == 0

    asyncio.run(main())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
def test_ipv6_outside_and_inside(unique_name: str, we_initiate: bool) -> None:
    """IKE and ESP-in-UDP over IPv6, IPv6 inner packets (ESP next header 41)."""
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ipv6=True) as s:
            ike_ev, child_ev = await s.establish(we_initiate)
            s.check_same_sa(ike_ev, child_ev)
            assert s.charon_sa()["remote-host"] == "2001:db8::1"
            # nothing was lost to neighbour discovery: IKE_SA_INIT + IKE_AUTH, no retransmission
            assert s.peer.transport.counters["ike_out"] == 2
            assert (await s.pings(3)) == (3, 3), (dict(s.peer.forwarder.counters), s.charon.log_tail())
            assert int(s.charon_child()["packets-in"]) == 6

    asyncio.run(main())


@pytest.mark.parametrize("who", ["ours-timed", "charon"])
def test_child_rekey_under_traffic_loses_nothing(unique_name: str, who: str) -> None:
    """Make-before-break: a ping flood across a CHILD_SA rekey (our lifetime timer or charon's
    vici rekey) loses no packet, and traffic ends up on the new SA."""
    ours_kw = {"child_lifetime_s": 4.0, "rekey_fraction": 0.5} if who == "ours-timed" else {}

    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ours_kw=ours_kw) as s:
            _ike, child_ev = await s.establish(True)
            flood = asyncio.create_task(aping(s.topo.hosts[0], s.topo.inside[1], count=60, interval=0.05))
            if who == "charon":
                await asyncio.sleep(1.0)
                await s.charon_call(s.charon.rekey, child="net")
            rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 6)
            assert rekeyed.old_inbound_spi == child_ev.keys.inbound.spi
            assert await flood == 60
            child = s.charon_child()
            assert int(child["spi-in"], 16) == rekeyed.keys.outbound.spi and int(child["packets-in"]) > 0

    asyncio.run(main())


def test_matrix_runner_reports_pass_and_fail(unique_name: str) -> None:
    """What ``ipsecemu interop`` runs: a good case passes with a setup time, a bad one is a
    readable failure (not an exception) within a few seconds."""
    good = asyncio.run(run_case(FAST, "aes128gcm16", True, prefix=unique_name, pings=1))
    assert good.ok and good.pings == (1, 1) and 0 < good.setup_ms < 5000, good
    bad = asyncio.run(run_case(FAST, "aes128gcm16-esn", False, prefix=unique_name, pings=1))
    assert not bad.ok and bad.initiator == "charon" and bad.detail, bad


def test_establish_fails_fast_on_refused_child(unique_name: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16", ours_kw={"esp": "aes256-sha256"}) as s:
            with pytest.raises(InteropMismatch, match="CHILD_SA failed"):
                await s.establish(True, timeout=5)

    asyncio.run(main())


def test_retransmits_until_charon_appears(unique_name: str) -> None:
    """The transport's one timer drives the core's retransmissions: IKE_SA_INIT sent while no
    charon listens is retransmitted until one starts, then the SA comes up."""
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16",
                                  ours_kw={"retransmit_timeout_s": 0.4, "retransmit_tries": 6}) as s:
            conn = s.charon.list_conns()
            assert "pair" in conn
            await asyncio.to_thread(s.charon.stop)
            s.peer.initiate("pair")
            await asyncio.sleep(1.5)
            sent_while_down = s.peer.transport.counters["ike_out"]
            assert sent_while_down >= 3  # first try + at least two retransmissions
            await asyncio.to_thread(s.charon.start)
            s.charon.load(pair_conn(s.topo, 1, ike_proposal=FAST, esp_proposal="aes128gcm16", psk=PSK))
            await s.peer.transport.wait_event(ev.ChildSaEstablished, 8)
            assert await s.until(lambda: bool(s.charon_child()))
            assert (await s.pings(1)) == (1, 1)

    asyncio.run(main())
