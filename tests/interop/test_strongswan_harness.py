"""The strongSwan harness on its own: charon <-> charon in two netns, checked through vici, by
data (ping through both libipsec tunnels) and by tshark decrypting a capture with the keys we
parsed from charon's log."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pyroute2 import netns

from ipsecemu.lab.harness import charon_pair
from ipsecemu.lab.netns import Netns, NetnsError, capture, ns_exec, wait_for
from ipsecemu.strongswan.charon import Charon, CharonError, charon_available
from ipsecemu.strongswan.conn import Child, Conn
from ipsecemu.strongswan.keylog import wireshark_esp_sa, wireshark_ikev2

NO_CHARON = charon_available()
needs_charon = pytest.mark.skipif(NO_CHARON is not None, reason=NO_CHARON or "")


def test_netns_rejects_long_link_names(unique_name: str) -> None:
    lab = Netns()
    with pytest.raises(NetnsError, match="15 characters"):
        lab.veth("x", "a" * 16, "y", "b")


# --------------------------------------------------------------------------- charon pair
def _sa(charon: Charon) -> dict:
    return charon.list_sas()["pair"]


@pytest.mark.root
@needs_charon
def test_charon_pair_establishes_and_passes_pings(unique_name: str) -> None:
    with charon_pair(unique_name) as p:
        left, right = _sa(p.left), _sa(p.right)
        assert left["state"] == right["state"] == "ESTABLISHED"
        assert (left["initiator-spi"], left["responder-spi"]) == (right["initiator-spi"], right["responder-spi"])
        # libipsec forces UDP encapsulation by faking NAT detection
        assert left["local-port"] == right["local-port"] == "4500"
        lc, rc = next(iter(left["child-sas"].values())), next(iter(right["child-sas"].values()))
        assert lc["state"] == rc["state"] == "INSTALLED"
        assert lc["encap"] == "yes" and lc["encr-alg"] == "AES_GCM_16" and lc["encr-keysize"] == "128"
        assert (lc["spi-in"], lc["spi-out"]) == (rc["spi-out"], rc["spi-in"])
        assert p.ping(count=3) == 3
        assert p.ping(count=2, from_left=False, size=1300) == 2
        lc = next(iter(_sa(p.left)["child-sas"].values()))
        assert int(lc["packets-out"]) >= 5 and int(lc["packets-in"]) >= 5


@pytest.mark.root
@needs_charon
def test_pair_cleans_up_netns_and_processes(unique_name: str) -> None:
    with charon_pair(unique_name) as p:
        pids = [p.left.pid, p.right.pid]
        # the pid we hold is charon itself (exec all the way down), not a wrapper
        for pid in pids:
            assert Path(f"/proc/{pid}/exe").resolve().name == "charon"
        names = (*p.gateways, *p.hosts)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not set(names) & set(netns.listnetns())


@pytest.mark.root
@needs_charon
def test_rekey_and_terminate_helpers(unique_name: str) -> None:
    with charon_pair(unique_name) as p:
        old = next(iter(_sa(p.left)["child-sas"].values()))
        p.left.rekey(child="net")
        assert wait_for(lambda: any(c["state"] == "INSTALLED" and c["spi-in"] != old["spi-in"]
                                    for c in p.left.child_sas()), 5)
        assert wait_for(lambda: all(c["spi-in"] != old["spi-in"] for c in p.left.child_sas()), 5)
        assert p.ping(count=2) == 2
        p.right.terminate(ike="pair")
        assert wait_for(lambda: not p.left.list_sas() and not p.right.list_sas(), 5)


@pytest.mark.root
@needs_charon
def test_bad_input_gives_clear_errors(unique_name: str, tmp_path: Path) -> None:
    lab = Netns()
    try:
        ns = lab.add(unique_name)
        with Charon(ns, tmp_path) as c:
            assert c.version()["daemon"] == "charon"
            bad = Conn(name="bad", proposals=("aes999-nosuchprf-modp1",))
            with pytest.raises(CharonError, match="load-conn bad"):
                c.load(bad)
            with pytest.raises(CharonError, match="initiate"):
                c.initiate(child="nosuchchild", ike="nosuch")
    finally:
        lab.close()
    with pytest.raises(NetnsError, match="already exists"):
        lab2 = Netns()
        try:
            lab2.add(unique_name + "x")
            lab2.add(unique_name + "x")
        finally:
            lab2.close()


@pytest.mark.root
@needs_charon
@pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("tcpdump") is None,
                    reason="tshark/tcpdump not installed")
def test_keys_from_log_decrypt_capture_in_tshark(unique_name: str, tmp_path: Path) -> None:
    """Cross-check of the key-log parser: tshark decrypts our capture with the parsed keys."""
    with charon_pair(unique_name, key_log=True) as p:
        pcap = tmp_path / "outer.pcap"
        with capture(p.gateways[0], unique_name + "o0", pcap, "udp port 4500"):
            assert p.ping(count=2) == 2
        keys = p.left.keys()
        assert len(keys.esp) == 2 and all(len(r["enc"]) == 40 for r in keys.esp)  # 16-byte key + salt
        assert keys.ike and keys.ike[0]["spi_i"] == _sa(p.left)["initiator-spi"]
        lc = next(iter(_sa(p.left)["child-sas"].values()))
        assert {r["spi"] for r in keys.esp} == {lc["spi-in"], lc["spi-out"]}
        conf = tmp_path / "ws"
        (conf / "wireshark").mkdir(parents=True)
        (conf / "wireshark" / "esp_sa").write_text(wireshark_esp_sa(keys.esp))
        r = subprocess.run(["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                            "-Y", "icmp", "-T", "fields", "-e", "ip.src", "-e", "icmp.type"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "XDG_CONFIG_HOME": str(conf)})
        rows = [ln.split("\t") for ln in r.stdout.splitlines()]
        # inner addresses only visible after decryption: requests from HL, replies from HR
        assert ["192.0.2.1,10.1.0.2", "8"] in rows and ["192.0.2.2,10.2.0.2", "0"] in rows, r.stdout + r.stderr


@pytest.mark.root
def test_ns_exec_runs_inside_the_namespace(unique_name: str) -> None:
    with Netns() as lab:
        ns = lab.add(unique_name)
        lab.veth(ns, unique_name + "a", ns, unique_name + "b", ("10.77.0.1/24",), ("10.77.0.2/24",))
        out = ns_exec(ns, "ip", "-o", "addr", "show", "dev", unique_name + "a").stdout
        assert "10.77.0.1/24" in out
    assert unique_name not in netns.listnetns()


@pytest.mark.root
@needs_charon
@pytest.mark.skipif(shutil.which("swanctl") is None, reason="swanctl not installed")
def test_swanctl_conf_loads_the_same_connection(unique_name: str, tmp_path: Path) -> None:
    """Independent check of the rendered swanctl.conf: swanctl parses it into the same
    connection that our vici message produced."""
    conn = Conn(name="viaici", local_addrs=("192.0.2.1",), remote_addrs=("192.0.2.2",), local_id="left",
                remote_id="right", psk="a psk with spaces", proposals=("aes256-sha256-modp2048", "aes128gcm16-prfsha256-ecp256"),
                dpd_delay=10, children=(Child(local_ts=("10.1.0.0/24",), remote_ts=("10.2.0.0/24", "10.3.0.0/24"),
                                              esp_proposals=("aes256-sha256", "aes128gcm16")),))
    file_conn = Conn(**{**conn.__dict__, "name": "viafile"})
    conf_dir = tmp_path / "swanctl"
    for d in ("x509", "x509ca", "private", "rsa", "ecdsa", "pkcs8", "pubkey", "conf.d"):
        (conf_dir / d).mkdir(parents=True)
    (conf_dir / "swanctl.conf").write_text(file_conn.swanctl_conf(include_secret=True))
    with Netns() as lab:
        ns = lab.add(unique_name)
        with Charon(ns, tmp_path / "charon") as c:
            # swanctl --load-all unloads what the file lacks, so it goes first
            r = ns_exec(ns, "swanctl", "--load-all", "--file", str(conf_dir / "swanctl.conf"),
                        "--uri", f"unix://{c.vici_path}", check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            c.load(conn)
            conns = c.list_conns()
            a, b = conns["viaici"], conns["viafile"]
            assert a == b and a["children"]["net"]["remote-ts"] == ["10.2.0.0/24", "10.3.0.0/24"]
            shared = ns_exec(ns, "swanctl", "--list-creds", "--uri", f"unix://{c.vici_path}", check=False)
            assert "a psk with spaces" not in (c.dir / "swanctl.conf").read_text()
            assert "a psk with spaces" not in shared.stdout


@pytest.mark.root
@needs_charon
@pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("tcpdump") is None,
                    reason="tshark/tcpdump not installed")
def test_ike_keys_from_log_decrypt_ike_auth_in_tshark(unique_name: str, tmp_path: Path) -> None:
    """SK_e/SK_a from charon's log, written as Wireshark's ikev2_decryption_table, let tshark
    decrypt IKE_AUTH and show the identities inside it."""
    pcap = tmp_path / "ike.pcap"
    with charon_pair(unique_name, key_log=True, ike_proposal="aes256-sha256-modp2048",
                     esp_proposal="aes256-sha256", establish=False) as p:
        with capture(p.gateways[0], unique_name + "o0", pcap, "udp port 500 or udp port 4500"):
            p.left.initiate(child="net", ike="pair")
            p.left.wait_established()
        keys = p.left.keys()
    rows = [r for r in keys.ike if "spi_i" in r]
    assert len(rows) == 1 and {"sk_ei", "sk_er", "sk_ai", "sk_ar"} <= set(rows[0])
    assert len(rows[0]["sk_ei"]) == 64 and len(rows[0]["sk_ai"]) == 64  # AES-256 and HMAC-SHA-256 keys
    conf = tmp_path / "ws"
    (conf / "wireshark").mkdir(parents=True)
    (conf / "wireshark" / "ikev2_decryption_table").write_text(wireshark_ikev2(rows))
    r = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "isakmp.exchangetype == 35",
                        "-T", "fields", "-e", "isakmp.id.data.fqdn"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "XDG_CONFIG_HOME": str(conf)})
    ids = set(r.stdout.replace(",", " ").split())  # the request carries IDi and IDr
    assert ids == {"left", "right"}, r.stdout + r.stderr
