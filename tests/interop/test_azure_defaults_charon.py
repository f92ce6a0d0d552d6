"""Azure Virtual WAN's documented default proposals (config.azure_policy) in ipsecemu's IKE core against a
real charon configured the way on-prem devices typically are for Azure.  Root + netns (pair topology)."""

from __future__ import annotations

import asyncio

import pytest

from ipsecemu.config.azure_policy import vwan_default_proposals
from ipsecemu.ike import events as ev
from ipsecemu.interop.pair import ours_vs_charon
from ipsecemu.strongswan.charon import charon_available

NO_CHARON = charon_available()

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or ""),
]

# a typical on-prem strongSwan config for Azure: AES256/SHA256/DH2 for IKE, AES256/SHA256 with PFS 14 for ESP
ONPREM_IKE, ONPREM_ESP = "aes256-sha256-modp1024", "aes256-sha256-modp2048"


def test_charon_initiates_with_pfs_and_azure_defaults_answer(unique_name: str) -> None:
    """Azure as responder: charon's IKE proposal is Azure's 2nd default row, and its PFS-14 rekey is
    accepted (a responder-only row); pings pass before and after."""
    ike, esp = vwan_default_proposals("responder")

    async def main() -> None:
        async with ours_vs_charon(unique_name, ONPREM_IKE, ONPREM_ESP,
                                  ours_kw={"ike": ",".join(ike), "esp": ",".join(esp)}) as s:
            ike_ev, child_ev = await s.establish(False)
            assert ike_ev.proposal == "aes256-sha256-prfsha256-modp1024"
            assert s.charon_sa()["dh-group"] == "MODP_1024"
            assert child_ev.keys.proposal == "aes256-sha256"  # IKE_AUTH: no PFS yet
            assert (await s.pings(2)) == (2, 2)
            await s.charon_call(s.charon.rekey, child="net")
            rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
            assert rekeyed.keys.proposal == "aes256-sha256-modp2048"  # PFS 14 accepted as responder
            assert await s.until(lambda: s.charon_child().get("dh-group") == "MODP_2048")
            assert (await s.pings(2)) == (2, 2)
            print(f"\nAzure defaults as responder vs charon ({ONPREM_IKE} / {ONPREM_ESP}): IKE {ike_ev.proposal}, "
                  f"first child {child_ev.keys.proposal}, rekey {rekeyed.keys.proposal}")

    asyncio.run(main())


def test_azure_defaults_initiate_and_charon_agrees(unique_name: str) -> None:
    """Azure as initiator: charon (on-prem, the same IKE proposal and ESP without PFS, which a device needs
    for Azure-initiated rekeys) picks from Azure's offer; the Azure-initiated rekey carries no PFS."""
    ike, esp = vwan_default_proposals("initiator")

    async def main() -> None:
        async with ours_vs_charon(unique_name, ONPREM_IKE, "aes256-sha256",
                                  ours_kw={"ike": ",".join(ike), "esp": ",".join(esp)}) as s:
            ike_ev, child_ev = await s.establish(True)
            assert ike_ev.proposal == "aes256-sha256-prfsha256-modp1024"
            assert child_ev.keys.proposal == "aes256-sha256"
            s.peer.call(s.peer.sa().rekey_child, child_ev.keys.inbound.spi)
            rekeyed = await s.peer.transport.wait_event(ev.ChildSaRekeyed, 8)
            assert rekeyed.keys.proposal == "aes256-sha256"  # Azure never starts a rekey with PFS
            assert await s.until(lambda: s.charon_child().get("spi-in") and "dh-group" not in s.charon_child())
            assert (await s.pings(2)) == (2, 2)

    asyncio.run(main())
