"""ipsecemu's IKE core against a real strongSwan 5.9.8 charon (kernel-libipsec) in a netns.

Left gateway: ipsecemu (IkeEndpoint + asyncio transport + tun forwarder).  Right gateway:
charon.  Each case is checked through vici (ESTABLISHED/INSTALLED, the same IKE and ESP SPIs,
the same algorithms) and by data: pings between the inside hosts pass through our ESP and
charon's libipsec both ways, and charon's own packet counters see them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ipsecemu.lab.netns import aping, wait_for
from ipsecemu.lab.strongswan import (
    CHARON_ENCR,
    CHARON_INTEG,
    Charon,
    CharonError,
    PairTopology,
    charon_available,
    pair_conn,
    pair_topology,
)

NO_CHARON = charon_available()
try:
    from ipsecemu.ike import events as ev
    from ipsecemu.ike.sa import IkeEndpoint  # noqa: F401 - presence check
    from ipsecemu.ike.settings import IkeSaConfig
    from ipsecemu.io.peer import IkePeer

    NO_CORE = None
except ImportError as exc:  # the core lands in stages
    NO_CORE = f"IKE core not available yet: {exc}"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
    pytest.mark.skipif(NO_CORE is not None, reason=NO_CORE or ""),
]

PSK = "ipsecemu-interop-psk"
# IKE proposal -> (ESP proposal, charon's dh-group name)
CASES = {
    "aes256-sha256-modp1024": ("aes256-sha256", "MODP_1024"),
    "aes256-sha256-modp2048": ("aes256-sha256", "MODP_2048"),
    "aes128-sha1-modp2048": ("aes128-sha1", "MODP_2048"),
    "aes256gcm16-prfsha384-ecp384": ("aes256gcm16", "ECP_384"),
    "aes128gcm16-prfsha256-ecp256": ("aes128gcm16", "ECP_256"),
    "aes256-sha384-x25519": ("aes256-sha384", "CURVE_25519"),
}
FAST = "aes128gcm16-prfsha256-ecp256"


class Setup:
    def __init__(self, topo: PairTopology, charon: Charon, peer: Any) -> None:
        self.topo, self.charon, self.peer = topo, charon, peer

    async def charon_call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """vici calls that wait for an exchange must not block our event loop (we answer it)."""
        return await asyncio.to_thread(fn, *args, **kw)

    async def until(self, pred: Any, timeout: float = 8.0) -> bool:
        return await asyncio.to_thread(wait_for, pred, timeout, 0.05)

    def charon_sa(self) -> dict:
        return self.charon.list_sas().get("pair", {})

    def charon_child(self) -> dict:
        children = [c for c in self.charon_sa().get("child-sas", {}).values() if c.get("state") == "INSTALLED"]
        return children[-1] if children else {}

    async def pings(self, count: int = 2) -> tuple[int, int]:
        a = await aping(self.topo.hosts[0], self.topo.inside[1], count, 1000)
        b = await aping(self.topo.hosts[1], self.topo.inside[0], count, 56)
        return a, b


@contextlib.asynccontextmanager
async def ours_vs_charon(prefix: str, ike: str, esp: str, *, charon_kw: dict | None = None,
                         ours_kw: dict | None = None, ipv6: bool = False,
                         key_log: bool = False) -> AsyncIterator[Setup]:
    with pair_topology(prefix, ipv6=ipv6) as topo:
        charon = Charon(topo.gateways[1], retransmit_timeout=1.0, retransmit_tries=2, key_log=key_log)
        try:
            await asyncio.to_thread(charon.start)
            charon.load(pair_conn(topo, 1, ike_proposal=ike, esp_proposal=esp, psk=PSK, **(charon_kw or {})))
            kw: dict[str, Any] = {"retransmit_timeout_s": 1.0, "retransmit_tries": 3, "ike": ike, "esp": esp,
                                  "psk": PSK, **(ours_kw or {})}
            psk = kw.pop("psk")
            cfg = IkeSaConfig.simple("pair", psk, "left", "right", local_ts=topo.subnets[0],
                                     remote_ts=topo.subnets[1], remote_addr=(topo.outer[1], 500), **kw)
            peer = IkePeer([cfg], topo.outer[0], netns=topo.gateways[0], tun_name=prefix + "t")
            await peer.start()
            try:
                yield Setup(topo, charon, peer)
            finally:
                peer.close()
        finally:
            charon.cleanup()


async def establish(s: Setup, we_initiate: bool) -> tuple[Any, Any]:
    t = s.peer.transport
    if we_initiate:
        s.peer.initiate("pair")
    else:
        await s.charon_call(s.charon.initiate, child="net", ike="pair")
    ike_ev = await t.wait_event(ev.IkeSaEstablished, 10)
    child_ev = await t.wait_event(lambda e: isinstance(e, ev.ChildSaEstablished), 10)
    assert await s.until(lambda: bool(s.charon_child())), s.charon.log_tail()
    return ike_ev, child_ev


def check_same_sa(s: Setup, ike_ev: Any, child_ev: Any) -> None:
    sa, child = s.charon_sa(), s.charon_child()
    assert sa["state"] == "ESTABLISHED" and child["state"] == "INSTALLED"
    assert (sa["initiator-spi"], sa["responder-spi"]) == (ike_ev.ike_spi_i.hex(), ike_ev.ike_spi_r.hex())
    keys = child_ev.keys
    assert int(child["spi-in"], 16) == keys.outbound.spi and int(child["spi-out"], 16) == keys.inbound.spi
    assert CHARON_ENCR[child["encr-alg"]] == keys.inbound.encr
    assert CHARON_INTEG.get(child.get("integ-alg", "")) == keys.inbound.integ
    salt = 4 if keys.inbound.encr.startswith(("aes-gcm", "chacha")) else 0
    assert int(child["encr-keysize"]) == (len(keys.inbound.enc_key) - salt) * 8
    assert child["encap"] == "yes" and keys.encap
    assert sa["remote-id"] == "left" and sa["local-id"] == "right"


def check_same_keys(s: Setup, child_ev: Any) -> None:
    """Byte-for-byte: the keys we derived are the ones charon logged (SK_* and ESP, per direction)."""
    keylog = s.charon.keys()
    ours = s.peer.sa().keys
    theirs = [r for r in keylog.ike if "spi_i" in r][-1]
    for name in ("sk_d", "sk_ei", "sk_er", "sk_ai", "sk_ar", "sk_pi", "sk_pr"):
        assert getattr(ours, name).hex() == theirs.get(name, ""), name
    inbound, outbound, _child = s.charon.esp_sa_configs()[-1]
    # charon's inbound is our outbound and vice versa
    assert (inbound.spi, inbound.enc_key, inbound.integ_key) == (
        child_ev.keys.outbound.spi, child_ev.keys.outbound.enc_key, child_ev.keys.outbound.integ_key)
    assert (outbound.spi, outbound.enc_key, outbound.integ_key) == (
        child_ev.keys.inbound.spi, child_ev.keys.inbound.enc_key, child_ev.keys.inbound.integ_key)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-init", "charon-init"])
@pytest.mark.parametrize("ike", list(CASES))
def test_establish_and_ping(unique_name: str, ike: str, we_initiate: bool) -> None:
    esp, dh = CASES[ike]

    async def main() -> None:
        async with ours_vs_charon(unique_name, ike, esp, key_log=True) as s:
            ike_ev, child_ev = await establish(s, we_initiate)
            check_same_sa(s, ike_ev, child_ev)
            assert s.charon_sa()["dh-group"] == dh
            check_same_keys(s, child_ev)
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
            _ike_ev, child_ev = await establish(s, we_initiate=True)
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
            _ike_ev, child_ev = await establish(s, we_initiate=who == "charon")
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
            ike_ev, _child_ev = await establish(s, we_initiate=True)
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
            await establish(s, we_initiate=True)
            await asyncio.sleep(2.6)  # >= 2 DPD rounds (charon only probes an idle SA)
            log = s.charon.log_file.read_text()
            assert log.count("sending DPD request") >= 2, log[-2000:]
            assert s.charon_sa().get("state") == "ESTABLISHED"
            assert not any(isinstance(e, ev.IkeSaDeleted) for e in s.peer.history)

    asyncio.run(main())


def test_our_dpd_alive_and_dead_peer(unique_name: str) -> None:
    async def main() -> None:
        async with ours_vs_charon(unique_name, FAST, "aes128gcm16",
                                  ours_kw={"retransmit_timeout_s": 0.3, "retransmit_tries": 2}) as s:
            await establish(s, we_initiate=True)
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
            ike_ev, child_ev = await establish(s, we_initiate)
            check_same_sa(s, ike_ev, child_ev)
            assert s.charon_sa()["remote-host"] == "2001:db8::1"
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
            _ike, child_ev = await establish(s, we_initiate=True)
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
