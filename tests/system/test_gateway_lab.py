"""Two ``ipsecemu gateway run`` daemons (real subprocesses) in network namespaces:

    [l] 10.1.0.2 --- 10.1.0.1 [a] 192.0.2.1 ===veth=== 192.0.2.2 [b] 10.2.0.1 --- 10.2.0.2 [r]

IKE comes up, ``sa list --json`` shows the SA on both, pings between l and r pass, a capture on
the middle veth shows only ESP (UDP 4500 or IP protocol 50) for that traffic, ``sa terminate``
stops the pings, rekeys lose no packets, counters come from the C loop, SIGTERM cleans up.
Needs root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipsecemu.gateway.datapath import loop_supports_raw
from ipsecemu.lab.harness import pair_topology
from ipsecemu.lab.harness import ping as ping6
from ipsecemu.lab.netns import Netns, capture, wait_for

from support.gateway_lab import (
    PROPOSALS,
    PSK,
    Gw,
    Lab,
    child_spis,
    established,
    links,
    ping,
    received,
    routes,
    start_ping,
    up,
)

pytestmark = pytest.mark.root


@pytest.mark.parametrize("encap", ["udp", "esp"])
def test_two_gateways_ping_only_esp_on_the_wire_terminate_and_sigterm(lab_factory, tmp_path: Path,
                                                                      encap: str) -> None:
    lab: Lab = lab_factory(encap=encap)
    up(lab)
    sa_a, sa_b = lab.a.sas()[0], lab.b.sas()[0]
    ch_a, ch_b = sa_a["child_sas"][0], sa_b["child_sas"][0]
    # the two ends agree on the SPIs (each one's in is the other's out) and the proposal
    assert ch_a["spi_in"] == ch_b["spi_out"] and ch_a["spi_out"] == ch_b["spi_in"]
    assert sa_a["initiator"] and not sa_b["initiator"]
    assert ch_a["encap"] is (encap == "udp")
    assert ch_a["local_ts"] == ["10.1.0.0/24"] and ch_a["remote_ts"] == ["10.2.0.0/24"]
    # the C loop forwards (raw ESP too once the built module has that mode)
    assert ch_a["backend"] == ("native" if encap == "udp" or loop_supports_raw() else "slow")
    assert f"10.2.0.0/24 dev {lab.a.tun}" in routes(lab.a.ns)

    pcap = tmp_path / "mid.pcap"
    with capture(lab.a.ns, lab.mid, pcap):
        assert ping(lab.left, "10.2.0.2", count=5) == 5
        assert ping(lab.right, "10.1.0.2", count=3) == 3
    # tshark: no ICMP between the inside hosts in clear; ESP carried the traffic
    out = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.protocols"],
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert not any("icmp" in p for p in out), out
    esp = [p for p in out if p.endswith(":esp")]
    assert len(esp) >= 16, out  # 8 echo requests + 8 replies
    if encap == "udp":
        assert all(":udp:udpencap:esp" in p for p in esp)
    else:
        assert all(p.endswith("ip:esp") for p in esp)

    # terminate on a: the SA goes on both sides, the pings stop, the routes go
    lab.a.cli("terminate", "vpn")
    assert wait_for(lambda: not lab.a.sas() and not lab.b.sas(), 10)
    assert ping(lab.left, "10.2.0.2", count=2, wait=1) == 0
    assert "10.2.0.0/24" not in routes(lab.a.ns)

    # SIGTERM: exit 0, no tun left, no pid file/socket
    assert lab.a.stop() == 0 and lab.b.stop() == 0
    assert lab.a.tun not in links(lab.a.ns) and lab.b.tun not in links(lab.b.ns)
    assert not lab.a.sock.exists() and not (lab.a.state / "gateway.pid").exists()
    assert "secret" not in (lab.a.state / "gateway.log").read_text().lower() or PSK not in lab.a.log()
    assert PSK not in (lab.a.state / "gateway.log").read_text()


def test_rekey_by_command_under_ping_loses_nothing(lab_factory) -> None:
    lab: Lab = lab_factory(encap="udp")
    up(lab)
    first = child_spis(lab.a)
    p = start_ping(lab.left, "10.2.0.2", count=150)
    time.sleep(0.6)
    assert lab.a.cli("rekey", "vpn").stdout.startswith("rekeying child")  # initiator side rekeys
    time.sleep(1.2)
    lab.b.cli("rekey", "vpn")  # then the responder side starts one
    assert received(p) == 150, lab.a.log() + lab.b.log()
    # two rekeys: a new SA, and after the old ones are deleted exactly one left on each side
    assert wait_for(lambda: len(child_spis(lab.a)) == 1 and len(child_spis(lab.b)) == 1, 10)
    assert child_spis(lab.a)[0] not in first
    log = (lab.a.state / "gateway.log").read_text()
    assert log.count("Child SA rekeyed") == 2, log


@pytest.mark.slow
def test_azure_datasize_lifetime_rekeys_under_ping(lab_factory) -> None:
    policy = """\
    ipsec_policy: {ike_encryption: GCMAES128, ike_integrity: GCMAES128, dh_group: DHGroup14,
                   ipsec_encryption: GCMAES128, ipsec_integrity: GCMAES128, pfs_group: None,
                   sa_lifetime_seconds: 3600, sa_datasize_kilobytes: 128}
"""
    lab: Lab = lab_factory(encap="udp", proposals=policy)
    up(lab)
    first = child_spis(lab.a)
    # 260 x 1028-byte inner packets each way = ~260 KB: the 128 KB limit (soft at 90%) rekeys twice
    p = start_ping(lab.left, "10.2.0.2", count=260, size=1000)
    assert received(p) == 260, lab.a.log() + lab.b.log()
    logs = (lab.a.state / "gateway.log").read_text() + (lab.b.state / "gateway.log").read_text()
    assert "soft byte/packet limit" in logs
    assert logs.count("Child SA rekeyed") >= 4, logs  # >= 2 rekeys, seen on both sides
    assert wait_for(lambda: child_spis(lab.a) and first[0] not in child_spis(lab.a), 5)
    # every live SA still has room: the hard limit was never reached, so nothing was refused
    c = lab.a.counters()["connections"]["vpn"]
    assert all(s["out"]["exhausted"] == 0 and s["in"]["exhausted"] == 0 for s in c["sas"])
    assert c["loop"]["encap_drop"] == 0 and c["loop"]["decap_drop"] == 0, c["loop"]


def tshark(home: Path, capture_file: Path, *args: str) -> str:
    """tshark with a private profile ($XDG_CONFIG_HOME/wireshark) holding the exported keys."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(home), "HOME": str(home)}
    proc = subprocess.run(["tshark", "-n", "-r", str(capture_file), "-o", "esp.enable_encryption_decode:TRUE",
                           "-o", "esp.enable_authentication_check:TRUE", *args],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "Error loading table" not in proc.stderr, proc.stderr
    return proc.stdout


def test_counters_come_from_the_c_loop_and_exported_keys_decrypt_the_wire(lab_factory, tmp_path: Path) -> None:
    lab: Lab = lab_factory(encap="udp")
    up(lab)
    home = tmp_path / "xdg"
    pcap = tmp_path / "mid.pcap"
    before = lab.a.counters()["connections"]["vpn"]
    with capture(lab.a.ns, lab.mid, pcap):
        assert ping(lab.left, "10.2.0.2", count=10, interval=0.05) == 10
        lab.a.cli("keys", "--out", str(home / "wireshark"))
        lab.a.cli("rekey", "vpn")  # an encrypted CREATE_CHILD_SA for the IKE keys to open
        assert wait_for(lambda: "Child SA rekeyed" in lab.b.log(), 5)
    after = lab.a.counters()["connections"]["vpn"]
    assert after["backend"] == "native" and after["native"] is True
    # the C loop moved the packets: its stats and the C table counters grew by the pings...
    assert after["loop"]["tun_rx"] - before["loop"].get("tun_rx", 0) >= 10
    assert after["loop"]["esp_ok"] - before["loop"].get("esp_ok", 0) >= 10
    assert before["sas"][0]["out"]["packets"] == 0 and before["sas"][0]["in"]["packets"] == 0
    # ...and no ESP ever reached the Python transport (no Python per data packet)
    assert lab.a.counters()["ike"]["192.0.2.1"]["transport"].get("esp_in", 0) == 0
    text = lab.a.cli("counters").stdout
    assert "backend native" in text and "esp_ok" in text
    listing = lab.a.cli("list").stdout
    assert "vpn: #1, ESTABLISHED, IKEv2" in listing and "TUNNEL-in-UDP" in listing
    # the exported files are owner-only and tshark opens both the ESP and the IKE traffic with them
    for f in ("esp_sa", "ikev2_decryption_table"):
        assert (home / "wireshark" / f).stat().st_mode & 0o777 == 0o600
    seqs = tshark(home, pcap, "-Y", "icmp", "-T", "fields", "-e", "icmp.seq").split()
    assert len(seqs) == 20, seqs  # 10 requests + 10 replies decrypted
    assert "Traffic Selector" in tshark(home, pcap, "-Y", "isakmp", "-V")
    assert PSK not in (lab.a.state / "gateway.log").read_text()


@pytest.mark.slow
def test_dpd_death_removes_routes_then_reinitiates(lab_factory) -> None:
    lab: Lab = lab_factory(encap="udp", dpd_a="{interval: 1, timeout: 3}")
    up(lab)
    assert ping(lab.left, "10.2.0.2", count=2) == 2
    # b dies without a word (no DELETE): a's DPD gives up, its SA and routes go
    os.kill(lab.b.proc.pid, signal.SIGKILL)
    lab.b.proc.wait(5)
    assert wait_for(lambda: "10.2.0.0/24" not in routes(lab.a.ns), 10), lab.a.log()
    assert "IKE SA deleted (dpd)" in lab.a.log() and "re-initiating" in lab.a.log()
    assert lab.a.tun in links(lab.a.ns)  # the tun stays; only the routes went (traffic can fall back)
    # b comes back: a (start_action initiate) brings the tunnel up again by itself
    lab.b.sock.unlink()
    lab.b.start()
    assert wait_for(lambda: established(lab.a) and established(lab.b), 20), lab.a.log()
    assert ping(lab.left, "10.2.0.2", count=2) == 2


def test_second_gateway_on_the_same_state_dir_is_refused(lab_factory) -> None:
    lab: Lab = lab_factory(encap="udp")
    r = subprocess.run(["ip", "netns", "exec", lab.a.ns, sys.executable, "-m", "ipsecemu", "gateway", "run",
                        str(lab.a.cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 6 and "already running" in r.stderr and "Traceback" not in r.stderr
    assert lab.a.proc.poll() is None and lab.a.sock.exists()  # the running one is untouched


CHACHA = """\
    esp_proposals: chacha20poly1305-modp2048
    ike_proposals: aes128gcm16-prfsha256-modp2048
"""


@pytest.mark.parametrize(("encap", "backend", "proposals", "why"), [
    ("udp", "reference", PROPOSALS, "the data plane is the Python reference"),
    ("esp", "reference", PROPOSALS, "the data plane is the Python reference"),
    ("udp", "auto", CHACHA, "chacha20-poly1305/aead has no C implementation"),
])
def test_python_slow_path_still_forwards_and_says_so(lab_factory, encap: str, backend: str, proposals: str,
                                                     why: str) -> None:
    lab: Lab = lab_factory(encap=encap, args=("--backend", backend), proposals=proposals)
    up(lab)
    assert lab.a.sas()[0]["child_sas"][0]["backend"] == "slow"
    assert ping(lab.left, "10.2.0.2", count=3) == 3
    assert f"slow path: Python encapsulates every packet because {why}" in lab.a.log()
    c = lab.a.counters()["connections"]["vpn"]
    assert c["loop"]["slow_esp_tx"] >= 3 and c["loop"]["slow_esp_ok"] >= 3


def test_one_address_two_tunnels_each_on_its_own_c_loop(unique_name: str, tmp_path: Path) -> None:
    """A hub with one IKE address and two connections (like an on-prem device to Azure's two
    active-active instances), both UDP-encapsulated on the same port 4500: each connection
    gets its own connected socket and C loop, and traffic to each spoke goes the right way.

        [l] 10.1.0.2 -- [a] 192.0.2.1 (lo) -- 198.51.100.2 [b] 10.2.0.1 (lo)
                                           -- 203.0.113.2  [c] 10.3.0.1 (lo)
    """
    p = unique_name
    net = Netns()
    gws: list[Gw] = []
    try:
        left, a, b, c = (net.add(p + s) for s in ("l", "a", "b", "c"))
        net.veth(left, p + "lh", a, p + "ai", ("10.1.0.2/24",), ("10.1.0.1/24",))
        net.veth(a, p + "ab", b, p + "ba", ("198.51.100.1/30",), ("198.51.100.2/30",))
        net.veth(a, p + "ac", c, p + "ca", ("203.0.113.1/30",), ("203.0.113.2/30",))
        net.addrs(a, "lo", "192.0.2.1/32")
        net.addrs(b, "lo", "10.2.0.1/32")
        net.addrs(c, "lo", "10.3.0.1/32")
        net.route(left, "0.0.0.0/0", gateway="10.1.0.1")
        net.route(b, "192.0.2.1/32", gateway="198.51.100.1")
        net.route(c, "192.0.2.1/32", gateway="203.0.113.1")
        net.sysctl(a, "net.ipv4.ip_forward", "1")
        conn = """\
  {name}:
    remote_address: {remote}
    psk: {psk}
{proposals}    local_ts: [{lts}]
    remote_ts: [{rts}]
    start_action: {start}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}}}
"""
        hub = tmp_path / "hub.yaml"
        hub.write_text(f"node: hub\nstate_dir: {tmp_path / 'hub'}\nlocal_addresses: [192.0.2.1]\n"
                       "datapath: {encapsulation: udp}\nconnections:\n"
                       + conn.format(name="to-b", remote="198.51.100.2", psk=PSK, proposals=PROPOSALS,
                                     lts="10.1.0.0/24", rts="10.2.0.0/24", start="initiate", tun=p + "tb")
                       + conn.format(name="to-c", remote="203.0.113.2", psk=PSK, proposals=PROPOSALS,
                                     lts="10.1.0.0/24", rts="10.3.0.0/24", start="initiate", tun=p + "tc"))
        for node, ns, local, rts in (("b", b, "198.51.100.2", "10.2.0.0/24"), ("c", c, "203.0.113.2", "10.3.0.0/24")):
            cfg = tmp_path / f"{node}.yaml"
            cfg.write_text(f"node: {node}\nstate_dir: {tmp_path / node}\nlocal_addresses: [{local}]\n"
                           "datapath: {encapsulation: udp}\nconnections:\n"
                           + conn.format(name="hub", remote="192.0.2.1", psk=PSK, proposals=PROPOSALS, lts=rts,
                                         rts="10.1.0.0/24", start="listen", tun=p + "t" + node))
            gws.append(Gw(ns, cfg, tmp_path / node, p + "t" + node))
        gws.append(Gw(a, hub, tmp_path / "hub", p + "tb"))
        for g in gws:
            g.start()
        hubgw = gws[-1]
        assert wait_for(lambda: sum(bool(s["child_sas"]) for s in hubgw.sas()) == 2, 20), hubgw.log()
        assert ping(left, "10.2.0.1", count=3) == 3 and ping(left, "10.3.0.1", count=4) == 4
        cs = hubgw.counters()["connections"]
        assert cs["to-b"]["backend"] == cs["to-c"]["backend"] == "native"
        assert cs["to-b"]["loop"]["esp_ok"] == 3 and cs["to-c"]["loop"]["esp_ok"] == 4
        assert cs["to-b"]["routes"] == ["10.2.0.0/24"] and cs["to-c"]["routes"] == ["10.3.0.0/24"]
        # one tunnel going away leaves the other one alone
        hubgw.cli("terminate", "to-b")
        assert wait_for(lambda: [s["name"] for s in hubgw.sas()] == ["to-c"], 10)
        assert ping(left, "10.3.0.1", count=2) == 2 and ping(left, "10.2.0.1", count=1, wait=1) == 0
        assert all(g.stop() == 0 for g in gws)
    finally:
        for g in gws:
            g.stop()
        net.close()


@pytest.mark.parametrize("encap", ["udp", "esp"])
def test_two_gateways_ipv6_outer_and_inner(unique_name: str, tmp_path: Path, encap: str) -> None:
    """IPv6 everywhere (the strongSwan harness's pair_topology(ipv6=True), no charon involved):
    IKE, ESP-in-UDP6 / raw ESP over IPv6, ping6 both ways."""
    with pair_topology(unique_name, ipv6=True) as topo:
        gws = []
        try:
            for side, start in ((1, "listen"), (0, "initiate")):
                name = ("left", "right")[side]
                gw = Gw(topo.gateways[side], tmp_path / f"{name}.yaml", tmp_path / name, unique_name + "t" + name[0])
                gw.cfg.write_text(f"""\
node: {name}
state_dir: {gw.state}
local_addresses: ["{topo.outer[side]}"]
datapath: {{encapsulation: {encap}}}
connections:
  pair:
    remote_address: "{topo.outer[1 - side]}"
    psk: {PSK}
    ike_proposals: aes128gcm16-prfsha256-ecp256
    esp_proposals: aes128gcm16
    local_ts: ["{topo.subnets[side]}"]
    remote_ts: ["{topo.subnets[1 - side]}"]
    start_action: {start}
    dpd: {{interval: 0}}
    tunnel: {{name: {gw.tun}, mtu: 1400}}
""")
                gws.append(gw)
                gw.start()
            right, left = gws
            assert wait_for(lambda: any(s["child_sas"] for s in left.sas()) and
                            any(s["child_sas"] for s in right.sas()), 20), left.log() + right.log()
            ch = left.sas()[0]["child_sas"][0]
            assert ch["encap"] is (encap == "udp") and ch["backend"] == "native"
            assert ping6(topo.hosts[0], topo.inside[1], count=3, timeout=20) == 3, left.log()
            assert ping6(topo.hosts[1], topo.inside[0], count=3, timeout=20) == 3, right.log()
            assert left.counters()["connections"]["pair"]["loop"]["esp_ok"] >= 6
        finally:
            for gw in gws:
                gw.stop()


def test_ike_sa_rekey_and_child_terminate_by_spi(lab_factory) -> None:
    lab: Lab = lab_factory(encap="udp")
    up(lab)
    ike = lab.a.sas()[0]
    child = ike["child_sas"][0]
    assert lab.a.cli("rekey", ike["initiator_spi"]).stdout.startswith("rekeying ike")
    assert wait_for(lambda: [s["initiator_spi"] for s in lab.a.sas()] not in ([], [ike["initiator_spi"]]), 5)
    new = lab.a.sas()
    assert len(new) == 1 and new[0]["child_sas"][0]["spi_in"] == child["spi_in"]  # the Child SA moved over
    assert ping(lab.left, "10.2.0.2", count=2) == 2
    # a Child SA by its (outbound) SPI: only that SA goes, the IKE SA stays
    lab.b.cli("terminate", child["spi_in"])  # b's outbound SPI is a's inbound
    assert wait_for(lambda: lab.a.sas() and not lab.a.sas()[0]["child_sas"], 5)
    assert lab.a.sas()[0]["state"] == "ESTABLISHED"
    assert ping(lab.left, "10.2.0.2", count=1, wait=1) == 0
    r = lab.a.cli("terminate", "0xdeadbeef", check=False)
    assert r.returncode == 7 and "no SA with SPI 0xdeadbeef" in r.stderr


def test_child_deleted_by_the_peer_is_recreated_under_close_action_restart(lab_factory) -> None:
    """The always-up side (start_action initiate, close_action restart) gets a new Child SA under the
    same IKE SA when the peer deletes its only one; without restart it stays without (test above)."""
    lab: Lab = lab_factory(encap="udp", extra_a="    close_action: restart\n")
    up(lab)
    ike = lab.a.sas()[0]
    old = ike["child_sas"][0]["spi_in"]
    lab.b.cli("terminate", old)  # b's outbound SPI is a's inbound
    assert wait_for(lambda: (s := lab.a.sas()) and s[0]["child_sas"] and s[0]["child_sas"][0]["spi_in"] != old, 10), \
        lab.a.log()
    now = lab.a.sas()
    assert len(now) == 1 and now[0]["initiator_spi"] == ike["initiator_spi"]  # the same IKE SA
    assert "no Child SA left with 192.0.2.2 (remote): creating a new one" in lab.a.log()
    assert ping(lab.left, "10.2.0.2", count=3) == 3
