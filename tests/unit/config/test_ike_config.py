"""Connection configuration: YAML and dict forms, Azure ipsec-policy names, errors with line numbers."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsecemu.base.satypes import EspSaConfig
from ipsecemu.config.azure_policy import (
    AZURE_DH_GROUP,
    AZURE_IKE_ENCRYPTION,
    AZURE_IKE_INTEGRITY,
    AZURE_IPSEC_ENCRYPTION,
    AZURE_IPSEC_INTEGRITY,
    AZURE_PFS_GROUP,
)
from ipsecemu.config.connection import (
    ConnectionConfigError,
    load,
    loads,
    parse_config,
    parse_connection,
    parse_ts,
)
from ipsecemu.config.connection_dump import dumps, summary, to_dict
from ipsecemu.ike.consts import IdType
from ipsecemu.ike.settings import Identity

BASE = {"remote_address": "10.51.230.4", "local_address": "172.24.127.211", "psk": "abc123"}
DOCS_POLICY = {  # the az CLI example from the Azure docs (scenarios S6)
    "ipsec-encryption": "AES256", "ipsec-integrity": "SHA256", "ike-encryption": "AES256",
    "ike-integrity": "SHA256", "dh-group": "DHGroup2", "pfs-group": "PFS2",
    "sa-life-time-seconds": 3600, "sa-data-size-kilobytes": 102400000,
}


def conn(**kw: object) -> object:
    return parse_connection({**BASE, **kw})


def ss(ps: tuple) -> list[str]:
    return [p.to_strongswan_string() for p in ps]


# ---------------------------------------------------------------- Azure policy names (S6)
def test_azure_docs_example() -> None:
    c = conn(ipsec_policy=DOCS_POLICY)
    assert ss(c.ike_proposals) == ["aes256-sha256-prfsha256-modp1024"]
    assert ss(c.esp_proposals) == ["aes256-sha256-modp1024"]
    assert (c.child_lifetime.seconds, c.child_lifetime.kilobytes) == (3600, 102400000)
    assert c.azure_policy is not None and c.azure_policy.dh_group == "DHGroup2"


def _policy(**over: str) -> dict:
    p = {"ike_encryption": "AES256", "ike_integrity": "SHA256", "dh_group": "DHGroup14",
         "ipsec_encryption": "AES256", "ipsec_integrity": "SHA256", "pfs_group": "None"}
    p.update(over)
    # GCM integrity needs the matching GCM encryption: keep the pair consistent
    if p["ipsec_integrity"].startswith("GCMAES"):
        p["ipsec_encryption"] = p["ipsec_integrity"]
    elif p["ipsec_encryption"].startswith("GCMAES") and "ipsec_integrity" not in over:
        p["ipsec_integrity"] = p["ipsec_encryption"]
    if p["ike_integrity"].startswith("GCMAES"):
        p["ike_encryption"] = p["ike_integrity"]
    return p


EXPECT = {
    ("ike_encryption", "DES3"): ("ike", "3des-sha256-prfsha256-modp2048"),
    ("ike_encryption", "AES128"): ("ike", "aes128-sha256-prfsha256-modp2048"),
    ("ike_encryption", "AES192"): ("ike", "aes192-sha256-prfsha256-modp2048"),
    ("ike_encryption", "AES256"): ("ike", "aes256-sha256-prfsha256-modp2048"),
    ("ike_encryption", "GCMAES128"): ("ike", "aes128gcm16-prfsha256-modp2048"),
    ("ike_encryption", "GCMAES256"): ("ike", "aes256gcm16-prfsha256-modp2048"),
    ("ike_integrity", "MD5"): ("ike", "aes256-md5-prfmd5-modp2048"),
    ("ike_integrity", "SHA1"): ("ike", "aes256-sha1-prfsha1-modp2048"),
    ("ike_integrity", "SHA256"): ("ike", "aes256-sha256-prfsha256-modp2048"),
    ("ike_integrity", "SHA384"): ("ike", "aes256-sha384-prfsha384-modp2048"),
    ("ike_integrity", "GCMAES128"): ("ike", "aes128gcm16-prfsha256-modp2048"),
    ("ike_integrity", "GCMAES256"): ("ike", "aes256gcm16-prfsha384-modp2048"),
    ("dh_group", "DHGroup1"): ("ike", "aes256-sha256-prfsha256-modp768"),
    ("dh_group", "DHGroup2"): ("ike", "aes256-sha256-prfsha256-modp1024"),
    ("dh_group", "DHGroup14"): ("ike", "aes256-sha256-prfsha256-modp2048"),
    ("dh_group", "DHGroup2048"): ("ike", "aes256-sha256-prfsha256-modp2048"),
    ("dh_group", "DHGroup24"): ("ike", "aes256-sha256-prfsha256-modp2048s256"),
    ("dh_group", "ECP256"): ("ike", "aes256-sha256-prfsha256-ecp256"),
    ("dh_group", "ECP384"): ("ike", "aes256-sha256-prfsha256-ecp384"),
    ("ipsec_encryption", "None"): ("esp", "null-sha256"),
    ("ipsec_encryption", "DES3"): ("esp", "3des-sha256"),
    ("ipsec_encryption", "AES128"): ("esp", "aes128-sha256"),
    ("ipsec_encryption", "AES192"): ("esp", "aes192-sha256"),
    ("ipsec_encryption", "AES256"): ("esp", "aes256-sha256"),
    ("ipsec_encryption", "GCMAES128"): ("esp", "aes128gcm16"),
    ("ipsec_encryption", "GCMAES192"): ("esp", "aes192gcm16"),
    ("ipsec_encryption", "GCMAES256"): ("esp", "aes256gcm16"),
    ("ipsec_integrity", "MD5"): ("esp", "aes256-md5"),
    ("ipsec_integrity", "SHA1"): ("esp", "aes256-sha1"),
    ("ipsec_integrity", "SHA256"): ("esp", "aes256-sha256"),
    ("ipsec_integrity", "GCMAES128"): ("esp", "aes128gcm16"),
    ("ipsec_integrity", "GCMAES192"): ("esp", "aes192gcm16"),
    ("ipsec_integrity", "GCMAES256"): ("esp", "aes256gcm16"),
    ("pfs_group", "None"): ("esp", "aes256-sha256"),
    ("pfs_group", "PFS1"): ("esp", "aes256-sha256-modp768"),
    ("pfs_group", "PFS2"): ("esp", "aes256-sha256-modp1024"),
    ("pfs_group", "PFS2048"): ("esp", "aes256-sha256-modp2048"),
    ("pfs_group", "PFS14"): ("esp", "aes256-sha256-modp2048"),
    ("pfs_group", "PFS24"): ("esp", "aes256-sha256-modp2048s256"),
    ("pfs_group", "ECP256"): ("esp", "aes256-sha256-ecp256"),
    ("pfs_group", "ECP384"): ("esp", "aes256-sha256-ecp384"),
    ("pfs_group", "PFSMM"): ("esp", "aes256-sha256-modp2048"),  # same as the IKE DH group
}

S6_VALUES = {
    "ike_encryption": ["DES", "DES3", "AES128", "AES192", "AES256", "GCMAES128", "GCMAES256"],
    "ike_integrity": ["MD5", "SHA1", "SHA256", "SHA384", "GCMAES128", "GCMAES256"],
    "dh_group": ["None", "DHGroup1", "DHGroup2", "DHGroup14", "DHGroup2048", "DHGroup24", "ECP256", "ECP384"],
    "ipsec_encryption": ["None", "DES", "DES3", "AES128", "AES192", "AES256", "GCMAES128", "GCMAES192",
                         "GCMAES256"],
    "ipsec_integrity": ["MD5", "SHA1", "SHA256", "GCMAES128", "GCMAES192", "GCMAES256"],
    "pfs_group": ["None", "PFS1", "PFS2", "PFS2048", "PFS14", "PFS24", "ECP256", "ECP384", "PFSMM"],
}


def test_tables_cover_exactly_the_documented_values() -> None:
    tables = {"ike_encryption": AZURE_IKE_ENCRYPTION, "ike_integrity": AZURE_IKE_INTEGRITY,
              "dh_group": AZURE_DH_GROUP, "ipsec_encryption": AZURE_IPSEC_ENCRYPTION,
              "ipsec_integrity": AZURE_IPSEC_INTEGRITY, "pfs_group": AZURE_PFS_GROUP}
    for k, vals in S6_VALUES.items():
        assert sorted(tables[k]) == sorted(vals), k


@pytest.mark.parametrize(("knob", "value"), sorted(EXPECT))
def test_every_s6_value_is_accepted(knob: str, value: str) -> None:
    which, want = EXPECT[(knob, value)]
    c = conn(ipsec_policy=_policy(**{knob: value}))
    got = c.ike_proposals if which == "ike" else c.esp_proposals
    assert ss(got) == [want]
    if which == "esp":  # every accepted ESP policy maps onto a data-plane SA
        encr, integ, esn = got[0].esp_dataplane()
        e, i = got[0].encr, got[0].integ
        EspSaConfig(spi=0x100, encr=encr, enc_key=bytes(e.keymat_len), integ=integ,
                    integ_key=bytes(i.key_len) if i else b"", esn=esn)


@pytest.mark.parametrize("knob", ["ike_encryption", "ipsec_encryption"])
def test_single_des_is_rejected_plainly(knob: str) -> None:
    with pytest.raises(ConnectionConfigError, match=rf"ipsec_policy\.{knob}: DES \(single DES\) is not supported"):
        conn(ipsec_policy=_policy(**{knob: "DES"}))


def test_dh_group_none_is_rejected_for_ikev2() -> None:
    with pytest.raises(ConnectionConfigError, match=r"dh_group: None is not possible with IKEv2"):
        conn(ipsec_policy=_policy(dh_group="None"))


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"ipsec_encryption": "AES256", "ipsec_integrity": "GCMAES256"},
         "ipsec_integrity: GCMAES256 requires ipsec_encryption GCMAES256, got AES256"),
        ({"ipsec_encryption": "GCMAES128", "ipsec_integrity": "GCMAES256"},
         "ipsec_integrity: GCMAES256 requires ipsec_encryption GCMAES256, got GCMAES128"),
        ({"ipsec_encryption": "GCMAES256", "ipsec_integrity": "SHA256"},
         "ipsec_encryption: GCMAES256 requires ipsec_integrity GCMAES256, got SHA256"),
        ({"ike_encryption": "AES256", "ike_integrity": "GCMAES256"},
         "ike_integrity: GCMAES256 requires ike_encryption GCMAES256, got AES256"),
        ({"pfs_group": "PFS5"}, "pfs_group: must be one of None, PFS1"),
        ({"dh_group": "DHGroup5"}, "dh_group: must be one of None, DHGroup1"),
    ],
)
def test_invalid_policy_combinations(over: dict, msg: str) -> None:
    p = {"ike_encryption": "AES256", "ike_integrity": "SHA256", "dh_group": "DHGroup14",
         "ipsec_encryption": "AES256", "ipsec_integrity": "SHA256", "pfs_group": "None", **over}
    with pytest.raises(ConnectionConfigError) as ei:
        conn(ipsec_policy=p)
    assert msg in str(ei.value)


def test_policy_keys_and_values_are_case_insensitive() -> None:
    a = conn(ipsec_policy={"IkeEncryption": "aes256", "IKEINTEGRITY": "sha256", "DhGroup": "dhgroup2",
                           "IpsecEncryption": "Aes256", "IpsecIntegrity": "SHA256", "PfsGroup": "pfs2",
                           "SaLifeTimeSeconds": 3600, "SADataSizeInKilobytes": 102400000})
    b = conn(ipsec_policy=DOCS_POLICY)
    assert a == b


def test_policy_lifetimes_and_conflicts() -> None:
    c = conn(ipsec_policy={**DOCS_POLICY, "sa-life-time-seconds": 27000, "sa-data-size-kilobytes": 1024})
    assert (c.child_lifetime.seconds, c.child_lifetime.kilobytes) == (27000, 1024)
    assert c.child_lifetime.to_dataplane().hard_bytes == 1024 * 1024
    with pytest.raises(ConnectionConfigError, match="missing pfs_group"):
        conn(ipsec_policy={k: v for k, v in DOCS_POLICY.items() if k != "pfs-group"})
    with pytest.raises(ConnectionConfigError, match="either ike_proposals/esp_proposals or ipsec_policy"):
        conn(ipsec_policy=DOCS_POLICY, esp_proposals="aes256gcm16")
    with pytest.raises(ConnectionConfigError, match="sa_lifetime_seconds: must be an integer"):
        conn(ipsec_policy={**DOCS_POLICY, "sa-life-time-seconds": "1h"})


# ---------------------------------------------------------------- strongSwan-style configuration
def test_defaults() -> None:
    c = conn()
    assert c.name == "conn" and c.mode == "tunnel" and c.start_action == "initiate"
    assert [str(t) for t in c.local_ts] == ["0.0.0.0/0"] and [str(t) for t in c.remote_ts] == ["0.0.0.0/0"]
    assert (c.child_lifetime.seconds, c.child_lifetime.kilobytes) == (3600, 102400000)  # Azure defaults
    assert c.ike_lifetime.seconds == 28800
    assert c.replay_window == 128 and (c.nat_t.ike_port, c.nat_t.natt_port) == (500, 4500)
    assert (c.dpd.interval, c.dpd.timeout) == (10, 45)
    assert c.effective_local_id() == Identity.parse("ipv4:172.24.127.211")
    assert ss(c.ike_proposals)[0] == "aes256gcm16-prfsha384-ecp384" and not c.esn


def test_strongswan_proposals_and_options() -> None:
    c = conn(ike_proposals=["aes256gcm16-prfsha384-ecp384", "aes256-sha256-modp2048"],
             esp_proposals="aes128gcm16-esn,aes256-sha256", mode="Transport", start_action="listen",
             replay_window=4096, dpd={"interval": 30, "timeout": 150},
             nat_t={"ike_port": 5500, "natt_port": 5501, "force_encap": True},
             ike_lifetime={"seconds": 14400, "rekey_margin": 600, "jitter": 300},
             child_lifetime={"seconds": 1800, "kilobytes": 1000, "packets": 10000})
    assert ss(c.ike_proposals) == ["aes256gcm16-prfsha384-ecp384", "aes256-sha256-prfsha256-modp2048"]
    assert c.esn and c.mode == "transport" and c.start_action == "listen" and c.replay_window == 4096
    # transport mode: selectors default to the two host addresses
    assert [str(t) for t in c.local_ts] == ["172.24.127.211/32"]
    assert [str(t) for t in c.remote_ts] == ["10.51.230.4/32"]
    assert (c.dpd.interval, c.dpd.timeout, c.nat_t.natt_port, c.nat_t.force_encap) == (30, 150, 5501, True)
    assert c.ike_lifetime.rekey_seconds() == 14400 - 600
    assert c.ike_lifetime.rekey_seconds(0.5) == 14400 - 600 - 150
    lt = c.child_lifetime.to_dataplane()
    assert (lt.hard_bytes, lt.soft_bytes, lt.hard_packets, lt.soft_packets) == (1024000, 921600, 10000, 9000)


def test_esn_flag_overrides_proposals() -> None:
    c = conn(esp_proposals="aes128gcm16,aes256-sha256", esn=True)
    assert all(p.esn for p in c.esp_proposals)
    assert ss(c.esp_proposals) == ["aes128gcm16-esn", "aes256-sha256-esn"]
    assert not conn(esp_proposals="aes128gcm16-esn", esn=False).esn


def test_identities() -> None:
    cases = {
        "fqdn:vpn.example.com": ("fqdn", "vpn.example.com", b"vpn.example.com", 2),
        "@vpn.example.com": ("fqdn", "vpn.example.com", b"vpn.example.com", 2),
        "vpn.example.com": ("fqdn", "vpn.example.com", b"vpn.example.com", 2),
        "10.51.230.4": ("ipv4", "10.51.230.4", bytes([10, 51, 230, 4]), 1),
        "ipv6:2001:db8::1": ("ipv6", "2001:db8::1", ipaddress.ip_address("2001:db8::1").packed, 5),
        "admin@example.com": ("rfc822", "admin@example.com", b"admin@example.com", 3),
        "email:admin@example.com": ("rfc822", "admin@example.com", b"admin@example.com", 3),
        "keyid:0A0b:0c": ("key_id", "0a0b0c", b"\x0a\x0b\x0c", 11),
        "#cafe": ("key_id", "cafe", b"\xca\xfe", 11),
    }
    for text, (kind, value, data, tid) in cases.items():
        i = Identity.parse(text)
        assert (i.type, i.value, i.data, i.type_id) == (kind, value, data, tid), text
        assert Identity.parse(i.spec()) == i
    c = conn(local_id={"type": "KEY_ID", "value": "0102"}, remote_id="fqdn:azure.example")
    assert c.local_id == Identity(IdType.KEY_ID, b"\x01\x02") and c.remote_id == Identity(IdType.FQDN, b"azure.example")
    for bad, msg in [("ipv4:2001:db8::1", "not an ipv4"), ("keyid:xyz", "hex"), ("rfc822:nobody", "user@domain"),
                     ("fqdn:", "without a value"), ("bad host!", "not a valid FQDN")]:
        with pytest.raises(ConnectionConfigError, match=msg):
            conn(remote_id=bad)


def test_traffic_selectors() -> None:
    t = parse_ts("10.0.1.0/24[tcp/8080]")
    assert (str(t.start_addr), str(t.end_addr), t.ip_proto, t.start_port, t.end_port) == (
        "10.0.1.0", "10.0.1.255", 6, 8080, 8080)
    t = parse_ts("10.2.27.0/25[udp/1000-2000]")
    assert (t.ip_proto, t.start_port, t.end_port) == (17, 1000, 2000)
    assert parse_ts("2001:db8::/64[icmp6]").ip_proto == 58
    assert parse_ts("10.0.0.1").start_addr == parse_ts("10.0.0.1").end_addr
    c = conn(local_ts=[{"cidr": "10.2.27.0/25", "protocol": "tcp", "ports": 8080}], remote_ts="10.0.1.0/24")
    assert (c.local_ts[0].ip_proto, c.local_ts[0].start_port) == (6, 8080) and len(c.remote_ts) == 1
    for bad, msg in [("10.0.0.0/33", "not a CIDR"), ("10.0.0.0/24[foo]", "unknown protocol"),
                     ("10.0.0.0/24[icmp/80]", "ports need protocol"), ("10.0.0.0/24[tcp/90-80]", "low <= high"),
                     ("10.0.0.0/24[tcp/70000]", "0-65535")]:
        with pytest.raises(ConnectionConfigError, match=msg):
            conn(remote_ts=[bad])


def test_auth_forms_and_secret_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    c = conn()
    assert c.auth.method == "psk" and c.auth.secret == b"abc123"
    assert "abc123" not in repr(c) and "abc123" not in str(c)
    monkeypatch.setenv("IPSECEMU_TEST_PSK", "from-env")
    c = parse_connection({**BASE, "psk": None} | {"psk": "env:IPSECEMU_TEST_PSK"})
    assert c.auth.secret == b"from-env"
    c = parse_connection({"remote_address": "1.2.3.4", "auth": {"method": "psk", "secret": "0x0102ff"}})
    assert c.auth.secret == b"\x01\x02\xff"
    c = parse_connection({"remote_address": "1.2.3.4",
                          "auth": {"method": "cert", "cert": "a.pem", "key": "a.key", "ca": "ca.pem"}})
    assert (c.auth.method, c.auth.cert, c.auth.key, c.auth.ca) == ("cert", "a.pem", "a.key", "ca.pem")
    for auth, msg in [({"method": "cert", "cert": "a.pem"}, "needs key"), ({"method": "psk"}, "needs a secret"),
                      ({"method": "eap"}, "must be psk or cert"), ({"psk": "x", "cert": "a"}, "only valid with")]:
        with pytest.raises(ConnectionConfigError, match=msg):
            parse_connection({"remote_address": "1.2.3.4", "auth": auth})
    with pytest.raises(ConnectionConfigError, match="IPSECEMU_NOT_SET_X is not set"):
        conn(psk="env:IPSECEMU_NOT_SET_X")


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"remote_address": "10.0.0.300"}, "remote_address: not an IPv4/IPv6 address"),
        ({"remote_address": "2001:db8::1"}, "IPv6 peer but IPv4 local address"),
        ({"remote_address": "%any"}, "initiate needs a concrete remote_address"),
        ({"mode": "tunel"}, "mode: must be tunnel or transport"),
        ({"start_action": "maybe"}, "start_action: must be initiate, listen or trap"),
        ({"replay_window": 5000}, "replay_window: must be in 0..4096"),
        ({"replay_window": "lots"}, "replay_window: must be an integer"),
        ({"ike_proposals": "aes256-sha1"}, "DH group"),
        ({"esp_proposals": []}, "empty proposal list"),
        ({"colour": "blue"}, "colour: unknown key; allowed:"),
        ({"dpd": {"interval": 60, "timeout": 30}}, "timeout (30) must be >= interval (60)"),
        ({"nat_t": {"ike_port": 4500}}, "must differ"),
        ({"child_lifetime": {"seconds": 100, "rekey_margin": 90, "jitter": 20}}, "must be below seconds"),
        ({"esn": "sometimes"}, "esn: must be true or false"),
        ({"psk": ""}, "empty"),
        ({"auth": {"psk": "x"}}, "either psk or auth"),
    ],
)
def test_errors_name_the_field(over: dict, msg: str) -> None:
    with pytest.raises(ConnectionConfigError) as ei:
        conn(**over)
    assert msg in str(ei.value)


def test_missing_required_fields() -> None:
    with pytest.raises(ConnectionConfigError, match="remote_address is required"):
        parse_connection({"psk": "x"})
    with pytest.raises(ConnectionConfigError, match="auth is required"):
        parse_connection({"remote_address": "1.2.3.4"})
    with pytest.raises(ConnectionConfigError, match="must be a mapping"):
        parse_config(["not", "a", "mapping"])


# ---------------------------------------------------------------- YAML
YAML = textwrap.dedent("""\
    connections:
      azure-er-i0:
        local_address: 172.24.127.211
        remote_address: 10.51.230.4
        local_id: onprem.example.com
        psk: abc123
        ipsec_policy:
          ike-encryption: AES256
          ike-integrity: SHA256
          dh-group: DHGroup14
          ipsec-encryption: GCMAES256
          ipsec-integrity: GCMAES256
          pfs-group: PFSMM
        remote_ts:
          - 10.51.230.0/24
          - 10.51.231.0/24
      s5-transport:
        local_address: 10.2.27.10
        remote_address: 10.0.1.4
        auth: {method: psk, secret: "s3cret"}
        esp_proposals: 3des-sha1
        mode: transport
        local_ts: ["10.2.27.0/25[tcp/8080]"]
        remote_ts: ["10.0.1.0/24[tcp/8080]"]
""")


def test_yaml_equals_dict(tmp_path: Path) -> None:
    import yaml

    f = tmp_path / "conns.yaml"
    f.write_text(YAML)
    from_file = load(f)
    assert from_file == parse_config(yaml.safe_load(YAML))
    a, b = from_file
    assert (a.name, b.name) == ("azure-er-i0", "s5-transport")
    assert ss(a.esp_proposals) == ["aes256gcm16-modp2048"] and len(a.remote_ts) == 2
    assert ss(b.esp_proposals) == ["3des-sha1"] and b.mode == "transport"
    assert b.esp_proposals[0].esp_dataplane() == ("3des-cbc", "hmac-sha1-96", False)


def _err(text: str) -> str:
    with pytest.raises(ConnectionConfigError) as ei:
        loads(text, "site.yaml")
    return str(ei.value)


def test_yaml_errors_carry_file_and_line() -> None:
    bad = YAML.replace("ipsec-integrity: GCMAES256", "ipsec-integrity: SHA256")
    assert _err(bad).startswith("site.yaml:11: connections.azure-er-i0.ipsec_policy.ipsec_encryption: "
                                "GCMAES256 requires ipsec_integrity GCMAES256, got SHA256")
    bad = YAML.replace("ike-encryption: AES256", "ike-encryption: DES")
    assert _err(bad).startswith("site.yaml:8: connections.azure-er-i0.ipsec_policy.ike_encryption: DES")
    bad = YAML.replace("- 10.51.231.0/24", "- 10.51.231.0/99")
    assert _err(bad).startswith("site.yaml:16: connections.azure-er-i0.remote_ts.1: not a CIDR network")
    bad = YAML.replace("mode: transport", "mode: tunnel-ish")
    assert _err(bad).startswith("site.yaml:22: connections.s5-transport.mode:")
    bad = YAML.replace('secret: "s3cret"', 'secret: ""')
    assert _err(bad).startswith("site.yaml:20: connections.s5-transport.auth.secret:")
    bad = YAML.replace("esp_proposals: 3des-sha1", "esp_proposals: 3des-sha1-bogus")
    assert "site.yaml:21:" in _err(bad) and "'bogus'" in _err(bad)
    assert _err("connections:\n  a: {remote_address: 1.2.3.4\n").startswith("site.yaml:3: YAML syntax error")
    assert _err("") == "site.yaml:1: empty file (no YAML document)"
    assert "site.yaml:2: colour: unknown key" in _err("remote_address: 1.2.3.4\ncolour: red\npsk: x\n")


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConnectionConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")


def test_yaml_duplicate_keys_and_alias_bombs() -> None:
    assert _err("remote_address: 1.2.3.4\npsk: a\nPSK: b\n").startswith(
        "site.yaml:3: PSK: duplicate key (first at line 2)")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    # nine levels of nine-fold aliases: walking it naively would visit ~10^9 nodes
    assert "unknown key" in _err(bomb)


# ---------------------------------------------------------------- robustness
_VOCAB = ["remote_address", "local_address", "psk", "auth", "method", "secret", "cert", "key", "local_id",
          "remote_id", "ike_proposals", "esp_proposals", "ipsec_policy", "ike_encryption", "dh_group",
          "pfs_group", "ipsec_integrity", "local_ts", "remote_ts", "mode", "child_lifetime", "seconds",
          "rekey_margin", "dpd", "interval", "timeout", "nat_t", "ike_port", "esn", "replay_window",
          "start_action", "type", "value", "cidr", "ports", "connections", "name"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.sampled_from(
    ["1.2.3.4", "::1", "%any", "psk", "cert", "AES256", "GCMAES256", "ECP384", "None", "PFSMM", "DES",
     "aes256-sha256-modp2048", "aes256gcm16", "10.0.0.0/8[tcp/80]", "tunnel", "listen", "fqdn", "0x0g",
     "env:NOPE_NOT_SET", "", "keyid:zz"]), st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(_VOCAB), kids, max_size=5)), max_leaves=25)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(_VOCAB), _VALUES, max_size=8))
def test_random_configs_give_a_config_or_a_config_error(data: dict) -> None:
    try:
        parse_config(data)
    except ConnectionConfigError as exc:
        assert str(exc)  # a message, never an unrelated exception type


# ---------------------------------------------------------------- back to YAML
@pytest.mark.parametrize(
    "over",
    [
        {},
        {"ipsec_policy": DOCS_POLICY, "local_id": "keyid:0a0b", "remote_id": "admin@example.com"},
        {"mode": "transport", "esp_proposals": "3des-sha1,aes128gcm16-esn", "esn": True},
        {"psk": "0x00ff10", "local_ts": ["10.2.27.0/25[tcp/8080]", "10.3.0.0/16[udp/1000-2000]"],
         "remote_ts": ["10.0.1.0/24[icmp]"], "dpd": False, "start_action": "listen"},
        {"psk": None, "auth": {"method": "cert", "cert": "a.pem", "key": "a.key"},
         "nat_t": {"force_encap": True, "natt_port": 14500}, "replay_window": 0,
         "child_lifetime": {"seconds": 1800, "packets": 5}, "ike_lifetime": 7200},
    ],
)
def test_to_dict_and_dumps_round_trip(over: dict) -> None:
    d = {**BASE, **over}
    if d.get("psk") is None:
        d.pop("psk")
    c = parse_connection(d)
    assert parse_connection(to_dict(c, include_secret=True)) == c
    assert loads(dumps([c], include_secret=True)) == [c]
    shared = dumps([c])
    assert "abc123" not in shared and "00ff10" not in shared


def test_dumps_hides_secret_behind_env(monkeypatch: pytest.MonkeyPatch) -> None:
    c = conn(psk="\x01binary")
    monkeypatch.setenv("IPSECEMU_PSK", "\x01binary")
    assert "env:IPSECEMU_PSK" in dumps([c])
    assert loads(dumps([c])) == [c]
    assert "0x0162696e617279" in dumps([c], include_secret=True)


def test_summary_shows_the_negotiable_parts_not_the_secret() -> None:
    text = summary(loads(YAML, "x.yaml"))
    assert "azure-er-i0: 172.24.127.211 -> 10.51.230.4 (tunnel, initiate, auth psk)" in text
    assert "  esp    aes256gcm16-modp2048" in text and "ipsec GCMAES256/GCMAES256/PFSMM" in text
    assert "s5-transport: 10.2.27.10 -> 10.0.1.4 (transport" in text and "10.2.27.0/25[6/8080]" in text
    assert "abc123" not in text and "s3cret" not in text
