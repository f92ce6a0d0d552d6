"""One ipsecemu endpoint with tunnels to two charons at once (as an on-premises device to both
instances of an active-active Azure VPN gateway): both IKE SAs share our UDP sockets and one
tun; each carries its own subnet; deleting one leaves the other working."""

from __future__ import annotations

import asyncio

import pytest

from ipsecemu.ike import events as ev
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.io.peer import IkePeer
from ipsecemu.lab.harness import star_topology
from ipsecemu.lab.netns import aping
from ipsecemu.strongswan.charon import Charon, charon_available
from ipsecemu.strongswan.conn import Child, Conn

NO_CHARON = charon_available()

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
]

PSK = "ipsecemu-multi-psk"
IKE, ESP = "aes128gcm16-prfsha256-ecp256", "aes128gcm16"


def test_one_endpoint_two_charons(unique_name: str) -> None:
    with star_topology(unique_name, 2) as topo:
        charons: list[Charon] = []
        try:
            for i in range(2):
                c = Charon(topo.remotes[i], retransmit_timeout=1.0, retransmit_tries=2)
                charons.append(c)
                c.start()
                c.load(Conn(name="hub", local_addrs=(topo.remote_addrs[i],), remote_addrs=(topo.hub_addr,),
                            local_id=f"inst{i}", remote_id="onprem", psk=PSK, proposals=(IKE,),
                            children=(Child(local_ts=(topo.remote_subnets[i],), remote_ts=(topo.hub_subnet,),
                                            esp_proposals=(ESP,)),)))
            cfgs = [IkeSaConfig.simple(f"inst{i}", PSK, "onprem", f"inst{i}", ike=IKE, esp=ESP,
                                       local_ts=topo.hub_subnet, remote_ts=topo.remote_subnets[i],
                                       remote_addr=(topo.remote_addrs[i], 500), retransmit_timeout_s=1.0)
                    for i in range(2)]

            async def main() -> None:
                peer = IkePeer(cfgs, topo.hub_addr, netns=topo.hub, tun_name=unique_name + "t")
                await peer.start()
                try:
                    peer.initiate("inst0")
                    peer.initiate("inst1")
                    ups = [await peer.transport.wait_event(ev.ChildSaEstablished, 10) for _ in range(2)]
                    by_remote = {e.keys.remote[0]: e for e in ups}
                    assert set(by_remote) == set(topo.remote_addrs)
                    for i, c in enumerate(charons):
                        sa = await asyncio.to_thread(c.wait_established)
                        child = next(iter(sa["child-sas"].values()))
                        assert int(child["spi-in"], 16) == by_remote[topo.remote_addrs[i]].keys.outbound.spi
                        assert sa["remote-id"] == "onprem" and sa["local-id"] == f"inst{i}"
                    for i in range(2):
                        assert await aping(topo.hub_host, topo.remote_inside[i], 2) == 2
                        assert await aping(topo.remote_hosts[i], topo.hub_inside, 2) == 2
                    # instance 0 goes away (its charon deletes the IKE SA); instance 1 is unaffected
                    await asyncio.to_thread(charons[0].terminate, ike="hub")
                    gone = await peer.transport.wait_event(ev.IkeSaDeleted, 8)
                    assert gone.ike_spi_i == by_remote[topo.remote_addrs[0]].ike_spi_i
                    assert await aping(topo.hub_host, topo.remote_inside[0], 1) == 0
                    assert await aping(topo.hub_host, topo.remote_inside[1], 2) == 2
                    assert charons[1].list_sas()["hub"]["state"] == "ESTABLISHED"
                finally:
                    peer.close()

            asyncio.run(main())
        finally:
            for c in charons:
                c.cleanup()
