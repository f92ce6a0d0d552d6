"""Config files drive the real IKE core: YAML / Azure device config -> IkeSaConfig -> two in-process
endpoints establish, and the negotiated Child SA carries traffic through the reference ESP."""

from __future__ import annotations

import random
import textwrap

import pytest

from ipsecemu.base.satypes import Verdict
from ipsecemu.config.azure import load_device_config
from ipsecemu.config.azure_policy import vwan_default_proposals
from ipsecemu.config.connection import ConnectionConfigError, loads, parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.dataplane import backend
from ipsecemu.ike import events as ev
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.states import IkeState

from support.paths import VECTORS

PAIR = textwrap.dedent("""\
    connections:
      onprem:
        local_address: 172.24.127.211
        remote_address: 10.51.230.4
        local_id: onprem.example.com
        remote_id: 10.51.230.4
        psk: abc123
        ipsec_policy: &policy
          ike_encryption: GCMAES256
          ike_integrity: GCMAES256
          dh_group: ECP384
          ipsec_encryption: GCMAES256
          ipsec_integrity: GCMAES256
          pfs_group: PFSMM
          sa_lifetime_seconds: 3600
          sa_datasize_kilobytes: 102400000
        local_ts: [10.2.27.0/25]
        remote_ts: [10.51.230.0/24, 10.51.231.0/24]
      azure-instance0:
        local_address: 10.51.230.4
        remote_address: 172.24.127.211
        remote_id: onprem.example.com
        psk: abc123
        start_action: listen
        ipsec_policy: *policy
        local_ts: [10.51.230.0/24, 10.51.231.0/24]
        remote_ts: [10.2.27.0/25]
""")


def _rng(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def _events(ep: IkeEndpoint) -> list:
    out = []
    while (e := ep.next_event()) is not None:
        out.append(e)
    return out


def _establish(a_cfg, b_cfg) -> tuple[list, list]:
    a_addr = (str(a_cfg.local_address), 500)
    b_addr = (str(b_cfg.local_address), 500)
    a = IkeEndpoint([to_ike_sa_config(a_cfg)], a_addr, rng=_rng(1))
    b = IkeEndpoint([to_ike_sa_config(b_cfg)], b_addr, rng=_rng(2))
    net = LoopbackNet([a, b])
    sa = a.initiate(a_cfg.name, net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    return _events(a), _events(b)


def _one(evs: list, cls: type):
    found = [e for e in evs if isinstance(e, cls)]
    assert len(found) == 1, evs
    return found[0]


def _esp_both_ways(ka: ev.ChildSaKeys, kb: ev.ChildSaKeys) -> None:
    be = backend("reference")
    for out_cfg, in_cfg in ((ka.outbound, kb.inbound), (kb.outbound, ka.inbound)):
        verdict, pkt = be.EspOutbound(out_cfg).encap(b"payload" * 9, 4)
        assert verdict == Verdict.OK
        assert be.EspInbound(in_cfg).decap(pkt).payload == b"payload" * 9


def test_yaml_pair_with_azure_policy_establishes() -> None:
    onprem, azure = loads(PAIR, "pair.yaml")
    ea, eb = _establish(onprem, azure)
    ia, ib = _one(ea, ev.IkeSaEstablished), _one(eb, ev.IkeSaEstablished)
    assert ia.proposal == ib.proposal == onprem.ike_proposals[0].to_strongswan_string()
    assert ia.remote_id == "10.51.230.4" and ib.remote_id == "onprem.example.com"
    ka, kb = _one(ea, ev.ChildSaEstablished).keys, _one(eb, ev.ChildSaEstablished).keys
    assert ka.outbound.encr == "aes-gcm-16" and len(ka.outbound.enc_key) == 36  # AES-256 + salt
    assert [str(t) for t in ka.remote_ts] == ["10.51.230.0/24", "10.51.231.0/24"]
    assert ka.lifetime_s == 3600
    # sa_datasize_kilobytes reaches the data plane as the hard byte limit
    assert ka.outbound.lifetime.hard_bytes == ka.inbound.lifetime.hard_bytes == 102400000 * 1024
    _esp_both_ways(ka, kb)


def test_device_config_site_establishes_with_both_instances() -> None:
    """Each tunnel imported from the Azure JSON comes up against an 'Azure side' with Azure's default
    responder proposals (the import offers Azure's defaults, not ipsecemu's own)."""
    ike, esp = vwan_default_proposals("responder")
    for conn in load_device_config(VECTORS / "azure" / "vwan-vpn-device-config.example.json")[:2]:
        azure = parse_connection({
            "name": "azure", "local_address": str(conn.config.remote_address),
            "remote_address": str(conn.config.local_address), "psk": "abc123", "start_action": "listen",
            "ike_proposals": ",".join(ike), "esp_proposals": ",".join(esp),
        })
        ea, eb = _establish(conn.config, azure)
        ka, kb = _one(ea, ev.ChildSaEstablished).keys, _one(eb, ev.ChildSaEstablished).keys
        _esp_both_ways(ka, kb)


def test_mismatched_policies_fail_to_negotiate() -> None:
    onprem, azure = loads(PAIR, "pair.yaml")
    other = parse_connection({
        "name": "azure", "local_address": "10.51.230.4", "remote_address": "172.24.127.211", "psk": "abc123",
        "start_action": "listen", "ike_proposals": "aes128-sha1-modp1024", "esp_proposals": "aes128-sha1",
    })
    a = IkeEndpoint([to_ike_sa_config(onprem)], ("172.24.127.211", 500), rng=_rng(1))
    b = IkeEndpoint([to_ike_sa_config(other)], ("10.51.230.4", 500), rng=_rng(2))
    net = LoopbackNet([a, b])
    sa = a.initiate("onprem", net.now)
    net.run()
    assert sa.state != IkeState.ESTABLISHED
    assert not any(isinstance(e, ev.IkeSaEstablished) for e in _events(a))


def test_cert_auth_names_the_missing_ca() -> None:
    c = parse_connection({"remote_address": "1.2.3.4", "auth": {"method": "cert", "cert": "a.pem", "key": "a.key"}})
    with pytest.raises(ConnectionConfigError, match="method cert needs ca"):
        to_ike_sa_config(c)


def test_core_config_fields() -> None:
    onprem, _ = loads(PAIR, "pair.yaml")
    core = to_ike_sa_config(onprem)
    assert core.remote_addr == ("10.51.230.4", 500) and core.psk == b"abc123"
    assert core.child_lifetime_s == 3600 and core.rekey_fraction == pytest.approx(0.9)
    assert core.dpd_delay_s == 10 and core.replay_window == 128
    assert "abc123" not in repr(core)


def test_ike_lifetime_margin_and_jitters_reach_the_core() -> None:
    """`ike_lifetime`'s own rekey_margin and both lifetimes' jitter are what the core schedules with
    (they were ignored: IKE rekeyed at the child's fraction, both with 10 % jitter)."""
    c = parse_connection({"local_address": "1.2.3.5", "remote_address": "1.2.3.4", "psk": "x",
                          "ike_lifetime": {"seconds": 1000, "rekey_margin": 300, "jitter": 0},
                          "child_lifetime": {"seconds": 600, "rekey_margin": 60, "jitter": 30}})
    core = to_ike_sa_config(c)
    assert core.ike_rekey_fraction == pytest.approx(0.7) and core.ike_jitter_s == 0
    assert core.rekey_fraction == pytest.approx(0.9) and core.child_jitter_s == 30
    # a lifetime of a few seconds scales the default margin to 0: the core keeps its defaults
    tiny = to_ike_sa_config(parse_connection({"local_address": "1.2.3.5", "remote_address": "1.2.3.4", "psk": "x",
                                              "ike_lifetime": 6}))
    assert tiny.ike_rekey_fraction is None and tiny.ike_jitter_s is None
    # and the core rekeys the IKE SA at 70 %, not before (no jitter)
    a = IkeEndpoint([to_ike_sa_config(c)], ("1.2.3.5", 500), rng=_rng(1))
    b = IkeEndpoint([to_ike_sa_config(parse_connection({"local_address": "1.2.3.4", "remote_address": "1.2.3.5",
                                                         "psk": "x",
                                                         "start_action": "listen", "ike_lifetime": 100000,
                                                         "child_lifetime": 100000}))],
                    ("1.2.3.4", 500), rng=_rng(2))
    net = LoopbackNet([a, b])
    sa = a.initiate(c.name, net.now)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    _events(a)
    net.advance(699.0)
    assert not any(isinstance(e, ev.IkeSaRekeyed) for e in _events(a))
    net.advance(2.0)
    assert any(isinstance(e, ev.IkeSaRekeyed) for e in _events(a))


@pytest.mark.parametrize("policy", [
    dict(ike_encryption="DES3", ike_integrity="MD5", dh_group="DHGroup1", ipsec_encryption="DES3",
         ipsec_integrity="MD5", pfs_group="None"),
    dict(ike_encryption="AES128", ike_integrity="SHA1", dh_group="DHGroup24", ipsec_encryption="None",
         ipsec_integrity="SHA256", pfs_group="PFS24"),
    dict(ike_encryption="AES192", ike_integrity="SHA384", dh_group="ECP256", ipsec_encryption="GCMAES192",
         ipsec_integrity="GCMAES192", pfs_group="ECP384"),
    dict(ike_encryption="GCMAES128", ike_integrity="GCMAES128", dh_group="DHGroup2048",
         ipsec_encryption="AES192", ipsec_integrity="SHA1", pfs_group="PFS2"),
], ids=["3des-md5-g1", "null-sha256-g24", "aes192-sha384-ecp256", "gcm128-g2048"])
def test_azure_policies_through_the_core(policy: dict) -> None:
    """Azure's weaker and odder policy values still negotiate end to end (both sides same policy)."""
    side = {"psk": "abc123", "ipsec_policy": policy}
    a = parse_connection({**side, "name": "a", "local_address": "192.0.2.1", "remote_address": "192.0.2.2"})
    b = parse_connection({**side, "name": "b", "local_address": "192.0.2.2", "remote_address": "192.0.2.1",
                          "start_action": "listen"})
    ea, eb = _establish(a, b)
    assert _one(ea, ev.IkeSaEstablished).proposal == a.ike_proposals[0].to_strongswan_string()
    ka, kb = _one(ea, ev.ChildSaEstablished).keys, _one(eb, ev.ChildSaEstablished).keys
    encr, integ, _ = a.esp_proposals[0].esp_dataplane()
    assert (ka.outbound.encr, ka.outbound.integ) == (encr, integ)
    _esp_both_ways(ka, kb)
