"""`config import-azure --lab`: the lab written from a Virtual WAN device configuration (config.azure_lab)
and the three defects of issue 10 -- shared remote_id (AUTHENTICATION_FAILED), dropped prefixes,
--private-ip silently keeping public addresses -- plus the other fields checked the same way."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecemu.cli import cli
from ipsecemu.config.azure import AzureConfigError, import_device_config
from ipsecemu.config.azure_lab import LabOptions, build_lab, render_lab, site_connections
from ipsecemu.config.azure_policy import vwan_default_proposals
from ipsecemu.config.connection import parse_connection
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.ike import events as ev
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet
from ipsecemu.ike.states import IkeState
from ipsecemu.lab import check

from support.paths import VECTORS

DEVICE = VECTORS / "azure" / "vwan-vpn-device-config.example.json"
ER_SITE = "VPN-over-ER-site"


@pytest.fixture
def example() -> list:
    return json.loads(DEVICE.read_text())


def _bgp(example: list, site: int = 0, peer: str = "10.0.255.1", asn: int = 65010,
         gw_bgp: tuple[str, str] = ("10.51.230.14", "10.51.230.15")) -> list:
    data = copy.deepcopy(example)
    s = data[site]
    s["vpnSiteConfiguration"]["BgpSetting"] = {"Asn": asn, "BgpPeeringAddress": peer}
    c = s["vpnSiteConnections"][0]
    c["connectionConfiguration"]["IsBgpEnabled"] = True
    c["gatewayConfiguration"]["BgpSetting"] = {"Asn": 65515, "BgpPeeringAddresses": dict(zip(
        ("Instance0", "Instance1"), gw_bgp, strict=True))}
    return data


def _lab(data: list, site: str | None = ER_SITE, **kw: object) -> dict:
    conns = import_device_config(data, source="dev.json", site=site)
    return build_lab(site_connections(conns, "dev.json", site), "dev.json", LabOptions(**kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------- (a) each side its own identity


def _sides(lab_text: str, conn: str) -> tuple:
    topo = check.check_text(lab_text, "lab.yaml")
    vc = next(c for c in topo.vpn if c.name == conn)
    return tuple(parse_connection(vc.side_config(n)) for n in vc.nodes)


def _run(a_cfg, b_cfg) -> tuple[IkeState, list]:
    r = random.Random(7)
    a = IkeEndpoint([to_ike_sa_config(a_cfg)], (str(a_cfg.local_address), 500), rng=lambda n: r.randbytes(n))
    b = IkeEndpoint([to_ike_sa_config(b_cfg)], (str(b_cfg.local_address), 500), rng=lambda n: r.randbytes(n))
    net = LoopbackNet([a, b])
    sa = a.initiate(a_cfg.name, net.now)
    net.run()
    evs = []
    while (e := b.next_event()) is not None:
        evs.append(e)
    return sa.state, evs


def test_lab_connections_authenticate_each_side_with_its_own_identity(example: list, monkeypatch) -> None:
    monkeypatch.setenv("IPSECEMU_PSK", "abc123")
    lab = _lab(example, static=True)
    for vc in lab["vpn"]["connections"]:
        assert not {"local_id", "remote_id"} & set(vc["config"])  # the shared config carries no identity
    text = render_lab(lab, "dev.json", site_connections(import_device_config(example, site=ER_SITE), "d", ER_SITE),
                      LabOptions(static=True))
    ce, gw = _sides(text, "ce-hubgw0")
    state, evs = _run(ce, gw)
    assert state == IkeState.ESTABLISHED
    (est,) = [e for e in evs if isinstance(e, ev.IkeSaEstablished)]
    assert (est.local_id, est.remote_id) == ("10.51.230.4", "172.24.127.211")
    assert est.proposal == vwan_default_proposals()[0][0]  # Azure's first default IKE proposal


def test_the_old_shared_remote_id_fails_authentication(example: list, monkeypatch) -> None:
    """Regression: one remote_id in the shared config (what the import wrote) makes one side reject
    the other (the AUTHENTICATION_FAILED of issue 10)."""
    monkeypatch.setenv("IPSECEMU_PSK", "abc123")
    lab = _lab(example, static=True)
    for vc in lab["vpn"]["connections"]:
        vc["config"]["remote_id"] = vc["addresses"][1]
    ce, gw = _sides(yaml.safe_dump(lab), "ce-hubgw0")
    state, evs = _run(ce, gw)
    assert state != IkeState.ESTABLISHED


def test_connections_output_has_both_ids_and_keeps_the_site_identity_behind_a_ce(example: list) -> None:
    c = import_device_config(example, site=ER_SITE, local_address="192.168.50.2")[0]
    assert str(c.config.local_address) == "192.168.50.2"
    assert str(c.config.local_id).endswith("172.24.127.211") and str(c.config.remote_id).endswith("10.51.230.4")
    with pytest.raises(AzureConfigError, match="--local-address: not an IP address"):
        import_device_config(example, local_address="ce.example")


# ---------------------------------------------------------------- (b) the prefixes


def test_hub_prefixes_become_azure_side_prefixes_in_both_forms(example: list) -> None:
    example[0]["vpnSiteConnections"][0]["hubConfiguration"]["ConnectedSubnets"] = ["10.51.231.0/24", "10.52.0.0/16"]
    static = _lab(example, static=True)
    want = ["10.51.230.0/24", "10.51.231.0/24", "10.52.0.0/16"]
    assert static["vpn"]["connections"][0]["routes"]["ce"] == want  # what the CE sends into each tunnel
    assert [r["dst"] for r in static["nodes"]["ce"]["routes"]] == want  # ER fallback, ECMP over both MSEEs
    assert static["nodes"]["spoke2"]["addresses"]["eth0"] == ["10.52.0.4/16"]
    assert static["nodes"]["hub"]["addresses"]["spoke2"] == ["10.52.0.1/16"]
    routed = _lab(_bgp(example))
    assert routed["routing"]["hub"] == {"node": "hub", "prefixes": want}
    assert routed["routing"]["ce"]["vpn"] == {"advertise": ["10.0.1.0/24"]}
    assert routed["routing"]["ce"]["expressroute"] == {"advertise": ["10.0.0.0/16", "172.24.127.211/32"]}


def test_onprem_prefixes_come_from_options_and_must_not_overlap_azure(example: list) -> None:
    lab = _lab(example, static=True, vpn_prefixes=("10.9.8.0/24",), er_prefixes=("10.9.0.0/16",))
    assert lab["nodes"]["onprem1"]["addresses"]["eth0"] == ["10.9.8.10/24"]
    assert lab["nodes"]["onprem2"]["addresses"]["eth0"] == ["10.9.0.10/24"]  # ER-only host, outside the VPN /24
    with pytest.raises(AzureConfigError, match="overlaps the Azure prefix 10.51.230.0/24"):
        _lab(example, static=True, vpn_prefixes=("10.51.0.0/16",))
    with pytest.raises(AzureConfigError, match="--vpn-prefix: not a CIDR"):
        _lab(example, static=True, vpn_prefixes=("10.9.8.1/24",))


def test_transit_links_avoid_the_files_prefixes(example: list) -> None:
    hub = example[0]["vpnSiteConnections"][0]
    hub["hubConfiguration"] = {"AddressSpace": "192.168.100.0/24", "ConnectedSubnets": []}
    hub["gatewayConfiguration"]["IpAddresses"] = {"Instance0": "192.168.100.4", "Instance1": "192.168.100.5"}
    lab = _lab(example, static=True)
    assert lab["nodes"]["msee1"]["addresses"]["ce"] == ["192.168.200.2/30"]
    assert "audit" not in lab  # no spoke: nothing to send to


# ---------------------------------------------------------------- (c) private addresses


def test_private_ip_on_an_internet_site_is_an_error_naming_the_path(example: list) -> None:
    with pytest.raises(AzureConfigError) as ei:
        import_device_config(example, use_private_ip=True, source="dev.json")
    msg = str(ei.value)
    assert msg.startswith("dev.json: [1].vpnSiteConnections[0].gatewayConfiguration.IpAddresses: --private-ip")
    assert "203.0.113.186" in msg and "PrivateIpAddresses" in msg
    # the ER site alone is fine: its instance addresses are private already
    assert [str(c.config.remote_address) for c in import_device_config(example, use_private_ip=True,
                                                                        site=ER_SITE)] == ["10.51.230.4", "10.51.230.5"]
    # UsePrivateIpAddress in the file without private addresses: the same error, naming the file's field
    example[1]["vpnSiteConnections"][0]["connectionConfiguration"]["UsePrivateIpAddress"] = True
    with pytest.raises(AzureConfigError, match=r"connectionConfiguration\.UsePrivateIpAddress asks"):
        import_device_config(example)


def test_a_lab_for_an_internet_site_is_refused_clearly(example: list) -> None:
    with pytest.raises(AzureConfigError, match="public instance addresses .*VPN over ExpressRoute"):
        _lab(example, site="VPN-over-INet-site", static=True)
    with pytest.raises(AzureConfigError, match="2 sites .*pick it with --site"):
        _lab(example, site=None, static=True)
    with pytest.raises(AzureConfigError, match="no such site; the file has: VPN-over-ER-site, VPN-over-INet-site"):
        import_device_config(example, site="nope")


def test_mixed_instance_addresses_are_refused(example: list) -> None:
    example[0]["vpnSiteConnections"][0]["gatewayConfiguration"]["IpAddresses"]["Instance1"] = "203.0.113.5"
    with pytest.raises(AzureConfigError, match="one instance address is private and the other public"):
        import_device_config(example)


# ---------------------------------------------------------------- BGP / routing intent


def test_routing_intent_lab_carries_asns_and_bgp_addresses(example: list) -> None:
    lab = _lab(_bgp(example, asn=65020))
    r = lab["routing"]
    assert r["ce"]["asn"] == 65020 and r["preference"] == "ExpressRoute" and r["msees"] == ["msee1", "msee2"]
    c0, c1 = lab["vpn"]["connections"]
    assert c0["bgp"] == {"ce": "10.0.255.1", "hubgw0": "10.51.230.14"}
    assert c1["bgp"] == {"ce": "10.0.255.1", "hubgw1": "10.51.230.15"}
    assert "routes" not in c0 and "routes" not in lab["nodes"]["msee1"]  # intent, not routes
    assert lab["nodes"]["ce"]["addresses"]["lo"] == ["172.24.127.211/32", "10.0.255.1/32"]
    assert lab["nodes"]["hubgw1"]["addresses"]["lo"] == ["10.51.230.15/32"]
    assert _lab(_bgp(example), preference="ASPath")["routing"]["preference"] == "ASPath"


def test_routing_intent_needs_bgp_in_the_file(example: list) -> None:
    with pytest.raises(AzureConfigError, match="IsBgpEnabled is false.*--static-routing"):
        _lab(example)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"asn": 65515}, "AS 65515 is reserved by Azure"),
        ({"asn": "65010"}, "BgpSetting.Asn: must be an AS number"),
        ({"gw_bgp": ("169.254.20.1", "169.254.21.2")}, "outside 169.254.21.0-169.254.22.255"),
        ({"peer": "172.24.127.211"}, "must not be the VPN device address"),
    ],
)
def test_bgp_fields_are_checked(example: list, kw: dict, msg: str) -> None:
    with pytest.raises(AzureConfigError, match=msg):
        import_device_config(_bgp(example, **kw))


def test_apipa_gateway_bgp_addresses_in_azures_range_are_accepted(example: list) -> None:
    conns = import_device_config(_bgp(example, gw_bgp=("169.254.21.1", "169.254.22.1")), site=ER_SITE)
    assert [c.gateway_bgp_address for c in conns] == ["169.254.21.1", "169.254.22.1"]


def test_bgp_enabled_without_gateway_peering_addresses(example: list) -> None:
    data = _bgp(example)
    del data[0]["vpnSiteConnections"][0]["gatewayConfiguration"]["BgpSetting"]
    with pytest.raises(AzureConfigError, match="gateway gives no BGP peering addresses"):
        import_device_config(data)


# ---------------------------------------------------------------- other fields, the same way


@pytest.mark.parametrize(
    ("path", "value", "msg"),
    [
        (["hubConfiguration", "ConnectedSubnets"], "10.51.231.0/24", "ConnectedSubnets: must be a list"),
        (["hubConfiguration", "ConnectedSubnets"], ["10.51.231.0/24", "x"], r"ConnectedSubnets\[1\]: not a CIDR"),
        (["hubConfiguration", "AddressSpace"], "10.51.230.1/24", "AddressSpace: not a CIDR prefix"),
        (["connectionConfiguration", "UsePrivateIpAddress"], "true", "UsePrivateIpAddress: must be true or false"),
        (["connectionConfiguration", "IPsecParameters", "IkeEncryption"], "AES256",
         "a custom policy needs all six"),
    ],
)
def test_connection_fields(example: list, path: list, value: object, msg: str) -> None:
    node = example[0]["vpnSiteConnections"][0]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(AzureConfigError, match=msg):
        import_device_config(example, source="dev.json")


def test_link_name_must_be_a_string(example: list) -> None:
    example[0]["vpnSiteConfiguration"]["LinkName"] = 7
    with pytest.raises(AzureConfigError, match=r"\[0\]\.vpnSiteConfiguration\.LinkName: must be a string"):
        import_device_config(example)


def test_custom_policy_in_ipsec_parameters_is_used(example: list) -> None:
    example[0]["vpnSiteConnections"][0]["connectionConfiguration"]["IPsecParameters"].update({
        "IkeEncryption": "AES256", "IkeIntegrity": "SHA256", "DhGroup": "DHGroup14",
        "IpsecEncryption": "GCMAES256", "IpsecIntegrity": "GCMAES256", "PfsGroup": "PFS2048"})
    c = import_device_config(example, site=ER_SITE)[0]
    assert c.custom_policy
    assert [p.to_strongswan_string() for p in c.config.esp_proposals] == ["aes256gcm16-modp2048"]
    lab = _lab(example, static=True)
    assert lab["vpn"]["connections"][0]["config"]["ipsec_policy"]["dh_group"] == "DHGroup14"


def test_default_import_offers_azures_defaults(example: list) -> None:
    c = import_device_config(example)[0]
    ike, esp = vwan_default_proposals("initiator")
    assert [p.to_strongswan_string() for p in c.config.ike_proposals] == ike
    assert [p.to_strongswan_string() for p in c.config.esp_proposals] == esp


# ---------------------------------------------------------------- the CLI


def test_cli_writes_a_static_lab_that_lab_check_accepts(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "lab.yaml"
    r = CliRunner().invoke(cli, ["config", "import-azure", str(DEVICE), "--site", ER_SITE, "--lab", str(out),
                                 "--static-routing", "--name", "azimport-unit"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert text.startswith("# Generated by `ipsecemu config import-azure`") and "abc123" not in text
    assert "env:IPSECEMU_PSK" in text and "export IPSECEMU_PSK" in r.output
    monkeypatch.setenv("IPSECEMU_PSK", "abc123")
    topo = check.check_text(text, str(out))
    assert topo.name == "azimport-unit" and {c.name for c in topo.vpn} == {"ce-hubgw0", "ce-hubgw1"}
    r = CliRunner().invoke(cli, ["config", "import-azure", str(DEVICE), "--site", ER_SITE, "--lab", str(out),
                                 "--static-routing", "--show-psk"])
    assert r.exit_code == 0 and "psk: abc123" in out.read_text()


def test_cli_routing_lab_and_errors(tmp_path: Path, example: list) -> None:
    f = tmp_path / "bgp.json"
    f.write_text(json.dumps(_bgp(example), indent=2))
    out = tmp_path / "lab.yaml"
    r = CliRunner().invoke(cli, ["config", "import-azure", str(f), "--site", ER_SITE, "--lab", str(out)])
    assert r.exit_code == 0, r.output
    assert "routing intent" in r.output and yaml.safe_load(out.read_text())["routing"]["ce"]["asn"] == 65010
    # errors: one line, file + JSON path, exit status 2, no traceback
    r = CliRunner().invoke(cli, ["config", "import-azure", str(DEVICE), "--private-ip"])
    assert r.exit_code == 2 and "gatewayConfiguration.IpAddresses: --private-ip" in r.output
    assert str(DEVICE) in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["config", "import-azure", str(DEVICE), "--static-routing"])
    assert r.exit_code == 2 and "--static-routing only applies with --lab" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(example, indent=2).replace('"10.51.231.0/24"', '"10.51.231.0/33"'))
    r = CliRunner().invoke(cli, ["config", "import-azure", str(bad)])
    line = next(i + 1 for i, ln in enumerate(bad.read_text().splitlines()) if "10.51.231.0/33" in ln)
    assert r.exit_code == 2 and f"{bad}:{line}: " in r.output and "ConnectedSubnets[0]: not a CIDR" in r.output


# ---------------------------------------------------------------- fuzz: never a traceback

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                    st.sampled_from(["10.1.0.0/16", "169.254.21.9", "203.0.113.9", "10.51.230.9", "65515"]),
                    st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=4), st.none(),
                                                                               max_size=2))


def _paths(x: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _paths(v, (*prefix, i))
    return out


_BASE = json.loads(DEVICE.read_text())
_ALL = _paths(_bgp(_BASE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_ALL), _VALUES, st.booleans()), min_size=1, max_size=3),
       st.booleans())
def test_fuzz_mutated_device_configs_end_in_a_value_or_one_clear_error(muts: list, static: bool) -> None:
    data = _bgp(_BASE)
    for path, value, delete in muts:
        node = data
        try:
            for k in path[:-1]:
                node = node[k]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        conns = import_device_config(data, source="fuzz.json")
        sites = list(dict.fromkeys(c.site for c in conns))
        for s in sites:
            build_lab(site_connections(conns, "fuzz.json", s), "fuzz.json", LabOptions(static=static))
    except AzureConfigError as exc:
        assert str(exc).startswith("fuzz.json") and "\n" not in str(exc)


def test_public_ip_on_a_private_only_site_is_an_error(example: list) -> None:
    with pytest.raises(AzureConfigError, match="--public-ip asks for the instances' public addresses"):
        import_device_config(example, use_private_ip=False, site=ER_SITE)
    assert len(import_device_config(example, use_private_ip=False, site="VPN-over-INet-site")) == 2


def test_generated_addresses_never_take_the_files_bgp_addresses(example: list, monkeypatch) -> None:
    """A site BGP address on the CE's LAN (.1) or on a host's spot (.10), an instance BGP address on the
    hub router's (.1): the lab moves its own addresses aside, and `lab check` finds no duplicate."""
    data = _bgp(example, peer="10.0.1.1", gw_bgp=("10.51.230.1", "10.51.230.15"))
    lab = _lab(data)
    assert lab["nodes"]["ce"]["addresses"]["lan1"] == ["10.0.1.2/24"]
    assert lab["nodes"]["onprem1"]["routes"] == [{"dst": "default", "via": "10.0.1.2"}]
    assert lab["nodes"]["hub"]["addresses"]["hubnet"] == ["10.51.230.2/24"]
    monkeypatch.setenv("IPSECEMU_PSK", "abc123")
    lab2 = _lab(_bgp(example, peer="10.0.1.10"), static=True)
    assert lab2["nodes"]["onprem1"]["addresses"]["eth0"] == ["10.0.1.11/24"]
    check.check_text(yaml.safe_dump(lab2), "lab.yaml")


def test_bgp_addresses_must_fit_azures_ranges(example: list) -> None:
    with pytest.raises(AzureConfigError, match="Instance0 BGP peering address 10.99.0.1 is neither in the hub"):
        _lab(_bgp(example, gw_bgp=("10.99.0.1", "10.51.230.15")))
    with pytest.raises(AzureConfigError, match="site's BGP peering address 10.51.231.9 lies inside an Azure"):
        _lab(_bgp(example, peer="10.51.231.9"))
