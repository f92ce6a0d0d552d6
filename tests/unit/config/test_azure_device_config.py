"""Azure Virtual WAN VPN device configuration JSON -> connection configs."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from ipsecemu.config.azure import AzureConfigError, import_device_config, load_device_config

from support.paths import VECTORS

EXAMPLE = VECTORS / "azure" / "vwan-vpn-device-config.example.json"


@pytest.fixture
def example() -> list:
    if not EXAMPLE.exists():
        pytest.fail(f"shared scenario file missing: {EXAMPLE}")
    return json.loads(EXAMPLE.read_text())


def test_example_file_gives_two_tunnels_per_site() -> None:
    conns = load_device_config(EXAMPLE)
    assert [(c.site, c.instance) for c in conns] == [
        ("VPN-over-ER-site", "Instance0"), ("VPN-over-ER-site", "Instance1"),
        ("VPN-over-INet-site", "Instance0"), ("VPN-over-INet-site", "Instance1"),
    ]
    er0, er1, inet0, inet1 = conns
    assert str(er0.config.local_address) == "172.24.127.211"
    assert (str(er0.config.remote_address), str(er1.config.remote_address)) == ("10.51.230.4", "10.51.230.5")
    assert (str(inet0.config.remote_address), str(inet1.config.remote_address)) == ("203.0.113.186", "203.0.113.195")
    assert er0.private_ip and er1.private_ip and not inet0.private_ip and not inet1.private_ip
    assert er0.config.auth.secret == b"abc123" and "abc123" not in repr(er0)
    assert (er0.config.child_lifetime.seconds, er0.config.child_lifetime.kilobytes) == (3600, 102400000)
    assert er0.azure_prefixes == ("10.51.230.0/24", "10.51.231.0/24")
    assert [str(t) for t in er0.config.remote_ts] == ["0.0.0.0/0"]  # route-based
    assert not er0.bgp_enabled and er0.link == "VPN-over-ER"
    assert len({c.config.name for c in conns}) == 4


def test_ipsec_policy_applies_with_file_lifetimes(example: list) -> None:
    example[0]["vpnSiteConnections"][0]["connectionConfiguration"]["IPsecParameters"] = {
        "SADataSizeInKilobytes": 2048, "SALifeTimeInSeconds": 27000}
    policy = {"ike_encryption": "GCMAES256", "ike_integrity": "GCMAES256", "dh_group": "ECP384",
              "ipsec_encryption": "GCMAES256", "ipsec_integrity": "GCMAES256", "pfs_group": "PFSMM"}
    c = import_device_config(example, ipsec_policy=policy)[0]
    assert [p.to_strongswan_string() for p in c.config.ike_proposals] == ["aes256gcm16-prfsha384-ecp384"]
    assert [p.to_strongswan_string() for p in c.config.esp_proposals] == ["aes256gcm16-ecp384"]
    assert (c.config.child_lifetime.seconds, c.config.child_lifetime.kilobytes) == (27000, 2048)


def test_private_ip_addresses_block_is_used_when_asked(example: list) -> None:
    site = example[1]
    gw = site["vpnSiteConnections"][0]["gatewayConfiguration"]
    gw["PrivateIpAddresses"] = {"Instance0": "10.51.230.4", "Instance1": "10.51.230.5"}
    conns = import_device_config([site])
    assert str(conns[0].config.remote_address) == "203.0.113.186" and not conns[0].private_ip
    site["vpnSiteConnections"][0]["connectionConfiguration"]["UsePrivateIpAddress"] = True
    conns = import_device_config([site])
    assert [str(c.config.remote_address) for c in conns] == ["10.51.230.4", "10.51.230.5"]
    assert all(c.private_ip for c in conns)
    assert str(import_device_config([site], use_private_ip=False)[0].config.remote_address) == "203.0.113.186"


def _bgp_site(example: list, peer: str | None) -> list:
    site = copy.deepcopy(example[0])
    site["vpnSiteConnections"][0]["connectionConfiguration"]["IsBgpEnabled"] = True
    site["vpnSiteConnections"][0]["gatewayConfiguration"]["BgpSetting"] = {
        "Asn": 65515, "BgpPeeringAddresses": {"Instance0": "10.51.230.14", "Instance1": "10.51.230.15"}}
    if peer is not None:
        site["vpnSiteConfiguration"]["BgpSetting"] = {"Asn": 65010, "BgpPeeringAddress": peer}
    return [site]


def test_bgp_enabled_site(example: list) -> None:
    conns = import_device_config(_bgp_site(example, "192.168.100.1"))
    assert all(c.bgp_enabled for c in conns) and conns[0].bgp_peer_address == "192.168.100.1"
    assert [c.gateway_bgp_address for c in conns] == ["10.51.230.14", "10.51.230.15"]
    assert conns[0].bgp_asn == 65515


@pytest.mark.parametrize(
    ("peer", "msg"),
    [
        (None, "IsBgpEnabled is true but the site has no BGP peering address"),
        ("172.24.127.211", "must not be the VPN device address"),
        ("169.254.21.1", "is APIPA (169.254.x.x)"),
        ("not-an-ip", "not an IP address"),
    ],
)
def test_bgp_checks(example: list, peer: str | None, msg: str) -> None:
    with pytest.raises(AzureConfigError) as ei:
        import_device_config(_bgp_site(example, peer), source="dev.json")
    assert msg in str(ei.value) and str(ei.value).startswith("dev.json: [0].vpnSiteConfiguration")


def _break(example: list, path: list, value: object) -> list:
    data = copy.deepcopy(example)
    node = data
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


C0 = [0, "vpnSiteConnections", 0]


@pytest.mark.parametrize(
    ("path", "value", "msg"),
    [
        ([0, "vpnSiteConfiguration", "IPAddress"], "172.24.127.300", "[0].vpnSiteConfiguration.IPAddress: not an IP"),
        ([0, "vpnSiteConfiguration", "Name"], "", "[0].vpnSiteConfiguration.Name: missing site name"),
        ([0, "vpnSiteConfiguration"], KeyError, "[0].vpnSiteConfiguration: missing"),
        ([*C0, "gatewayConfiguration", "IpAddresses", "Instance1"], KeyError,
         "[0].vpnSiteConnections[0].gatewayConfiguration.IpAddresses.Instance1: missing"),
        ([*C0, "connectionConfiguration", "PSK"], "", "connectionConfiguration.PSK: missing or empty"),
        ([*C0, "connectionConfiguration", "IsBgpEnabled"], "yes", "IsBgpEnabled: must be true or false"),
        ([*C0, "connectionConfiguration", "IPsecParameters", "SALifeTimeInSeconds"], -5,
         "SALifeTimeInSeconds: must be a positive integer"),
        ([*C0, "hubConfiguration", "ConnectedSubnets"], ["10.51.231.0/33"], "not a CIDR prefix"),
        ([0, "vpnSiteConnections"], [], "[0].vpnSiteConnections: expected a non-empty list"),
        ([1, "vpnSiteConfiguration", "Name"], "VPN-over-ER-site", "duplicate site name"),
    ],
)
def test_errors_give_the_json_path(example: list, path: list, value: object, msg: str) -> None:
    with pytest.raises(AzureConfigError) as ei:
        import_device_config(_break(example, path, value), source="dev.json")
    assert msg in str(ei.value)


def test_keys_are_case_insensitive(example: list) -> None:
    text = json.dumps(example).replace('"IPAddress"', '"ipAddress"').replace('"PSK"', '"psk"')
    text = text.replace('"IpAddresses"', '"ipAddresses"').replace('"Instance0"', '"instance0"')
    a = import_device_config(json.loads(text))
    assert [c.config for c in a] == [c.config for c in import_device_config(example)]


def test_ipv6_mismatch_and_policy_errors_are_wrapped(example: list) -> None:
    data = _break(example, [*C0, "gatewayConfiguration", "IpAddresses", "Instance0"], "2001:db8::4")
    data = _break(data, [*C0, "gatewayConfiguration", "IpAddresses", "Instance1"], "2001:db8::5")
    with pytest.raises(AzureConfigError, match=r"\(Instance0\).*IPv6 peer but IPv4 local address"):
        import_device_config(data)
    bad_policy = {"ike_encryption": "DES", "ike_integrity": "SHA1", "dh_group": "DHGroup2",
                  "ipsec_encryption": "AES256", "ipsec_integrity": "SHA1", "pfs_group": "None"}
    with pytest.raises(AzureConfigError, match="single DES"):
        import_device_config(example, ipsec_policy=bad_policy)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(AzureConfigError, match="cannot read"):
        load_device_config(tmp_path / "missing.json")
    f = tmp_path / "bad.json"
    f.write_text("[{\n  oops\n}]")
    with pytest.raises(AzureConfigError, match=r"bad\.json:2: invalid JSON"):
        load_device_config(f)
    with pytest.raises(AzureConfigError, match="non-empty list of sites"):
        import_device_config([])
    with pytest.raises(AzureConfigError, match="must be an object"):
        import_device_config(["x"])


def test_local_address_override(example: list) -> None:
    c = import_device_config(example, local_address="172.24.127.212")[0]
    assert c.config.local_address == ipaddress.ip_address("172.24.127.212")


def test_file_errors_name_the_line(example: list, tmp_path: Path) -> None:
    """Read through the config kit, every error of the JSON file names file:line: json.path."""
    text = json.dumps(_break(example, [*C0, "connectionConfiguration", "IPsecParameters", "SALifeTimeInSeconds"], -5),
                      indent=2)
    f = tmp_path / "dev.json"
    f.write_text(text)
    want = [i + 1 for i, ln in enumerate(text.splitlines()) if '"SALifeTimeInSeconds": -5' in ln][0]
    with pytest.raises(AzureConfigError) as ei:
        load_device_config(f)
    assert str(ei.value).startswith(f"{f}:{want}: ") and "SALifeTimeInSeconds: must be a positive integer" in str(ei.value)
    f.write_bytes(b'[{"a": "caf\xe9"}]')
    with pytest.raises(AzureConfigError, match="not UTF-8"):
        load_device_config(f)
