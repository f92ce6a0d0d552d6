"""ESP data-plane interop with strongSwan's libipsec, without our IKE: charon <-> charon negotiate,
we read the right charon's keys from its level-4 log, kill it (no DELETE goes out), and our tun
forwarder takes over its SAs.  Pings between the inside hosts then pass through charon's
libipsec on one side and ipsecemu's ESP on the other, in both directions."""

from __future__ import annotations

import asyncio

import pytest

from ipsecemu.dataplane import BackendUnavailable, backend
from ipsecemu.io.transport import IkeTransport
from ipsecemu.io.tunnel import TunForwarder
from ipsecemu.lab.harness import charon_pair
from ipsecemu.lab.netns import aping
from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")]


def _backend_or_skip(name: str) -> str:
    try:
        backend(name)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    return name


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes256gcm16", "aes128gcm8", "aes128-sha1", "aes256-sha256",
                                 "aes256-sha512", "chacha20poly1305"])
@pytest.mark.parametrize("dp", ["reference", "native"])
def test_forwarder_takes_over_charon_sas(unique_name: str, esp: str, dp: str) -> None:
    dp = _backend_or_skip(dp)
    with charon_pair(unique_name, key_log=True, esp_proposal=esp) as p:
        inbound, outbound, child = p.right.esp_sa_configs()[0]
        assert inbound.spi == int(child["spi-in"], 16)
        p.right.kill()
        gw_r = p.gateways[1]

        async def main() -> tuple[int, int, dict]:
            tr = await IkeTransport(None, [p.outer[1]], netns=gw_r).start()
            fw = TunForwarder(tr, unique_name + "tun", netns=gw_r, backend=dp).open()
            try:
                fw.install(inbound, outbound, (p.outer[0], 4500), ["10.1.0.0/24"], ["10.2.0.0/24"])
                # right host -> left host (our encap first), then left -> right (libipsec first)
                a = await aping(p.hosts[1], p.inside[0], 3, 1200)
                b = await aping(p.hosts[0], p.inside[1], 3, 56)
                return a, b, dict(fw.counters)
            finally:
                fw.close()
                tr.close()

        a, b, counters = asyncio.run(main())
        assert (a, b) == (3, 3), counters
        assert counters["decap_ok"] == 6 and counters["encap_ok"] == 6
        assert not any(k.startswith("decap_") and k != "decap_ok" for k in counters), counters
        # charon's own counters agree: it accepted all six of our packets and sent six
        left = next(iter(p.left.list_sas()["pair"]["child-sas"].values()))
        assert int(left["packets-in"]) == 6 and int(left["packets-out"]) == 6
        assert left["encr-alg"] == child["encr-alg"]
