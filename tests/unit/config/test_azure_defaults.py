"""Azure Virtual WAN's documented default proposals (config.azure_policy) against the real IKE core:
each documented row negotiates, in Azure's role, and the PFS rows work the way Azure documents them
(accepted as responder, never offered as initiator)."""

from __future__ import annotations

import random

import pytest

from ipsecemu.config.azure_policy import (
    VWAN_DEFAULT_ESP_INITIATOR,
    VWAN_DEFAULT_ESP_RESPONDER,
    VWAN_DEFAULT_IKE,
    esp_proposal_string,
    ike_proposal_string,
    vwan_default_proposals,
)
from ipsecemu.config.connection import DEFAULT_ESP, DEFAULT_IKE, parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.ike import events as ev
from ipsecemu.ike.consts import Notify
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState

AZURE, ONPREM = "10.51.230.4", "172.24.127.211"


def test_table_is_azures_documented_list_in_azures_order() -> None:
    ike, esp_i = vwan_default_proposals("initiator")
    _, esp_r = vwan_default_proposals("responder")
    # phase 1: AES256/AES128 x SHA1/SHA256, all DH group 2 (MODP 1024)
    assert ike == ["aes256-sha1-prfsha1-modp1024", "aes256-sha256-prfsha256-modp1024",
                   "aes128-sha1-prfsha1-modp1024", "aes128-sha256-prfsha256-modp1024"]
    # phase 2 as initiator: no PFS, GCM first
    assert esp_i == ["aes256gcm16", "aes256-sha1", "aes256-sha256", "aes128-sha1"]
    # as responder: the initiator rows first, then 15 more (PFS 1/2/14/24 and AES128/SHA256)
    assert esp_r[:4] == esp_i and len(esp_r) == 19 and len(set(esp_r)) == 19
    groups = {w for p in esp_r for w in p.split("-") if w.startswith("modp")}
    assert groups == {"modp768", "modp1024", "modp2048", "modp2048s256"}  # PFS1, PFS2, PFS14, PFS24
    assert "ecp384" not in " ".join(ike + esp_r)  # what the import used to invent
    with pytest.raises(ValueError, match="initiator or responder"):
        vwan_default_proposals("both")


def test_rows_use_the_one_azure_name_table() -> None:
    assert ike_proposal_string("GCMAES256", "GCMAES256", "ECP384") == "aes256gcm16-prfsha384-ecp384"
    assert esp_proposal_string("AES256", "SHA256", "PFS24") == "aes256-sha256-modp2048s256"
    assert len(VWAN_DEFAULT_IKE) == 4 and set(VWAN_DEFAULT_ESP_INITIATOR) < set(VWAN_DEFAULT_ESP_RESPONDER)


def _rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def _conn(name: str, local: str, remote: str, ike: list[str] | str, esp: list[str] | str, listen: bool):
    return parse_connection({
        "name": name, "local_address": local, "remote_address": remote, "psk": "lab-only",
        "ike_proposals": ike if isinstance(ike, str) else ",".join(ike),
        "esp_proposals": esp if isinstance(esp, str) else ",".join(esp),
        "start_action": "listen" if listen else "initiate",
    })


def _events(ep: IkeEndpoint) -> list:
    out = []
    while (e := ep.next_event()) is not None:
        out.append(e)
    return out


def _pair(initiator, responder) -> tuple[IkeEndpoint, IkeEndpoint, LoopbackNet, IkeSa]:
    a = IkeEndpoint([to_ike_sa_config(initiator)], (str(initiator.local_address), 500), rng=_rng(1))
    b = IkeEndpoint([to_ike_sa_config(responder)], (str(responder.local_address), 500), rng=_rng(2))
    net = LoopbackNet([a, b])
    sa = a.initiate(initiator.name, net.now)
    net.run()
    return a, b, net, sa


def _azure(role: str):
    ike, esp = vwan_default_proposals(role)
    if role == "initiator":
        return _conn("azure", AZURE, ONPREM, ike, esp, listen=False)
    return _conn("azure", AZURE, ONPREM, ike, esp, listen=True)


@pytest.mark.parametrize("row", VWAN_DEFAULT_IKE, ids=lambda r: "-".join(r))
def test_each_default_ike_row_negotiates_with_azure_as_responder(row: tuple[str, str, str]) -> None:
    want = ike_proposal_string(*row)
    onprem = _conn("onprem", ONPREM, AZURE, want, "aes256-sha256", listen=False)
    a, b, _, sa = _pair(onprem, _azure("responder"))
    assert sa.state == IkeState.ESTABLISHED
    (est,) = [e for e in _events(b) if isinstance(e, ev.IkeSaEstablished)]
    assert est.proposal == want


@pytest.mark.parametrize("row", VWAN_DEFAULT_ESP_RESPONDER, ids=lambda r: "-".join(r))
def test_each_responder_esp_row_including_pfs_rekeys(row: tuple[str, str, str]) -> None:
    """An on-prem device offering exactly this row: the first Child SA (inside IKE_AUTH, never PFS) and
    then an on-prem-initiated rekey, which carries the row's PFS group when it has one."""
    want = esp_proposal_string(*row)
    onprem = _conn("onprem", ONPREM, AZURE, "aes256-sha256-modp1024", want, listen=False)
    a, b, net, sa = _pair(onprem, _azure("responder"))
    assert sa.state == IkeState.ESTABLISHED
    (child,) = [e for e in _events(b) if isinstance(e, ev.ChildSaEstablished)]
    no_pfs = want.rsplit("-", 1)[0] if "modp" in want else want
    assert child.keys.proposal == no_pfs  # KE transforms are ignored inside IKE_AUTH
    _events(a)
    sa.rekey_child(next(iter(sa.children)), net.now)
    net.run()
    rekeyed = [e for e in _events(b) if isinstance(e, ev.ChildSaRekeyed)]
    assert len(rekeyed) == 1, "Azure (responder) refused the rekey"
    assert rekeyed[0].keys.proposal == want  # with the PFS group when the row has one


def test_azure_initiates_without_pfs_and_each_initiator_row_is_reached() -> None:
    for row in VWAN_DEFAULT_ESP_INITIATOR:
        want = esp_proposal_string(*row)
        onprem = _conn("onprem", ONPREM, AZURE, "aes128-sha256-prfsha256-modp1024", want, listen=True)
        a, b, net, sa = _pair(_azure("initiator"), onprem)
        assert sa.state == IkeState.ESTABLISHED
        (child,) = [e for e in _events(b) if isinstance(e, ev.ChildSaEstablished)]
        assert child.keys.proposal == want
        sa.rekey_child(next(iter(sa.children)), net.now)  # Azure starts the rekey: no KE payload
        net.run()
        (rk,) = [e for e in _events(b) if isinstance(e, ev.ChildSaRekeyed)]
        assert "modp" not in rk.keys.proposal


def test_onprem_that_insists_on_pfs_breaks_azure_initiated_rekeys() -> None:
    """The documented trap: Azure rekeys with its no-PFS proposals, a device demanding PFS refuses."""
    onprem = _conn("onprem", ONPREM, AZURE, "aes256-sha1-modp1024", "aes256-sha1-modp2048", listen=True)
    a, b, net, sa = _pair(_azure("initiator"), onprem)
    assert sa.state == IkeState.ESTABLISHED  # the first Child SA has no PFS anyway
    _events(a)
    sa.rekey_child(next(iter(sa.children)), net.now)
    net.run()
    failed = [e for e in _events(a) if isinstance(e, ev.ChildSaFailed)]
    assert failed and failed[0].notify == Notify.NO_PROPOSAL_CHOSEN


def test_ipsecemu_own_defaults_do_not_match_azure() -> None:
    """What the import offered before (ECP384 / MODP2048) is not among Azure's defaults: no IKE SA."""
    onprem = _conn("onprem", ONPREM, AZURE, DEFAULT_IKE, DEFAULT_ESP, listen=False)
    a, b, _, sa = _pair(onprem, _azure("responder"))
    assert sa.state != IkeState.ESTABLISHED
    assert not any(isinstance(e, ev.IkeSaEstablished) for e in _events(b))


@pytest.mark.parametrize("dh", ["DHGroup1", "DHGroup2", "DHGroup14", "DHGroup2048", "DHGroup24", "ECP256", "ECP384"])
def test_pfsmm_uses_the_ike_group(dh: str) -> None:
    c = parse_connection({"remote_address": "192.0.2.2", "psk": "x", "ipsec_policy": {
        "ike_encryption": "AES256", "ike_integrity": "SHA256", "dh_group": dh, "ipsec_encryption": "AES256",
        "ipsec_integrity": "SHA256", "pfs_group": "PFSMM"}})
    assert c.ike_proposals[0].ke == c.esp_proposals[0].ke and c.esp_proposals[0].ke is not None
