"""Builder features er-vwan does not use: source rules, tables, weights, IPv6, segments; the CLI odds and ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ipsecemu.lab import builder, topology
from ipsecemu.lab.state import LabState, run_dir

from support.nonroot import non_root_prefix
from support.paths import (
    REPO,  # noqa: E402
    underlay_copy,
)

PAIR = underlay_copy(REPO / "netns-labs" / "pair.yaml")  # the builder alone; VPN: test_lab_vpn*.py

pytestmark = pytest.mark.root

FEATURES = """
name: {name}
nodes:
  a:
    kind: host
    ipv6: true
    addresses:
      x: [10.0.0.2/24]
      y: [10.0.1.2/24, fd00:1::2/64]
    routes:
      - {{dst: 10.9.0.0/16, via: 10.0.0.1}}
      - {{dst: 10.9.0.0/16, via: 10.0.1.1, table: 100}}
      - dst: 10.8.0.0/16
        nexthops: [{{via: 10.0.0.1, weight: 3}}, {{via: 10.0.1.1, weight: 1}}]
    rules:
      - {{from: 10.0.1.2/32, table: 100, priority: 1000}}
    sysctls: {{net.ipv4.conf.all.rp_filter: 0}}
  rx:
    kind: router
    addresses: {{x: [10.0.0.1/24]}}
  ry:
    kind: router
    ipv6: true
    addresses: {{y: [10.0.1.1/24, fd00:1::1/64]}}
  h1: {{kind: host, addresses: {{e: [10.5.0.1/24]}}}}
  h2: {{kind: host, addresses: {{e: [10.5.0.2/24]}}}}
  h3: {{kind: host, addresses: {{e: [10.5.0.3/24]}}}}
links:
  - endpoints: ["a:x", "rx:x"]
  - endpoints: ["a:y", "ry:y"]
segments:
  - name: lan
    members: [h1:e, h2:e, h3:e]
    mtu: 1400
"""


def nsx(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=20)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def new_name() -> str:
    return "t" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def feat() -> topology.Topology:
    t = topology.loads(FEATURES.format(name=new_name()), "features.yaml")
    builder.build(t)
    try:
        yield t
    finally:
        builder.teardown(t.name)
    assert not builder.orphan_netns(t.name)


def _dev_for(t: topology.Topology, dst: str, src: str | None = None) -> str:
    cmd = ["ip", "-j", "route", "get", dst] + (["from", src] if src else [])
    return json.loads(nsx(t.netns("a"), *cmd).stdout)[0]["dev"]


def test_source_rule_selects_table(feat: topology.Topology) -> None:
    assert _dev_for(feat, "10.9.0.1") == "x"  # main table
    assert _dev_for(feat, "10.9.0.1", "10.0.1.2") == "y"  # rule from 10.0.1.2 -> table 100
    rules = json.loads(nsx(feat.netns("a"), "ip", "-j", "rule", "show").stdout)
    assert any(r.get("priority") == 1000 and r.get("table") == "100" and r.get("src") == "10.0.1.2" for r in rules)


def test_weighted_multipath(feat: topology.Topology) -> None:
    (r,) = json.loads(nsx(feat.netns("a"), "ip", "-j", "route", "show", "10.8.0.0/16").stdout)
    assert {(h["gateway"], h["weight"]) for h in r["nexthops"]} == {("10.0.0.1", 3), ("10.0.1.1", 1)}


def test_user_sysctl_applied_and_ipv6_only_where_asked(feat: topology.Topology) -> None:
    assert nsx(feat.netns("a"), "sysctl", "-n", "net.ipv4.conf.all.rp_filter").stdout.strip() == "0"
    assert nsx(feat.netns("rx"), "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert nsx(feat.netns("h1"), "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert nsx(feat.netns("h1"), "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").stdout.strip() == "1"
    assert nsx(feat.netns("a"), "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").stdout.strip() == "0"
    res = nsx(feat.netns("a"), "ping", "-6", "-c", "1", "-W", "2", "fd00:1::1")
    assert res.returncode == 0, res.stdout + res.stderr


def test_segment_is_one_l2_subnet_with_mtu(feat: topology.Topology) -> None:
    for src, dst in (("h1", "10.5.0.2"), ("h1", "10.5.0.3"), ("h3", "10.5.0.2")):
        assert nsx(feat.netns(src), "ping", "-c", "1", "-W", "2", dst).returncode == 0
    link = json.loads(nsx(feat.netns("h2"), "ip", "-j", "link", "show", "e").stdout)[0]
    assert link["mtu"] == 1400
    ports = json.loads(nsx(feat.segment_netns("lan"), "ip", "-j", "link", "show", "master", "br0").stdout)
    assert sorted(p["ifname"] for p in ports) == ["p0", "p1", "p2"]


def test_smoke_flag_and_non_root_status() -> None:
    name = new_name()
    # without its audit: (which expects the VPN this underlay copy lacks) --smoke pings between the hosts
    plain = PAIR.with_name("pair-no-audit.yaml")
    plain.write_text(PAIR.read_text().split("\naudit:")[0] + "\n")
    res = cli("up", str(plain), "--name", name, "--smoke")
    try:
        assert res.returncode == 0, res.stderr
        assert "smoke: left -> right (10.2.0.10): ok (2/2 replies" in res.stdout
        assert "smoke: right -> left (10.1.0.10): ok (2/2 replies" in res.stdout
        # status reads the state file without root (no live details then)
        nobody = subprocess.run([*non_root_prefix(REPO / "netns-labs" / "er-vwan.yaml"), sys.executable, "-m", "ipsecemu", "lab", "status", name, "--json"],
                                capture_output=True, text=True, timeout=60, cwd="/")
        assert nobody.returncode == 0, nobody.stderr
        (lab,) = json.loads(nobody.stdout)["labs"]
        assert lab["live_details"] is False and {n["name"] for n in lab["nodes"]} == {"left", "gwa", "gwb", "right"}
        assert "er-vwan-lab-only-psk" not in nobody.stdout and "pair-lab-only-psk" not in nobody.stdout
    finally:
        assert cli("down", name).returncode == 0
    assert not builder.orphan_netns(name)


def test_down_without_state_removes_netns_by_name() -> None:
    name = new_name()
    assert cli("up", str(PAIR), "--name", name).returncode == 0
    try:
        shutil.rmtree(run_dir() / name)  # somebody wiped the state dir
        assert len(builder.orphan_netns(name)) == 4
        res = cli("down", name)
        assert res.returncode == 0 and "no state recorded" in res.stdout
        assert builder.orphan_netns(name) == []
    finally:
        cli("down", name)


def test_capture_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    name = new_name()
    assert cli("up", str(PAIR), "--name", name).returncode == 0
    try:
        pcap = tmp_path / "x.pcap"
        proc = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{name}/gwb:wan", "-w", str(pcap)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert proc.stderr is not None
        assert "capturing on" in proc.stderr.readline()  # printed once tcpdump is listening
        st = LabState.open(name)
        tcpdump = st.data["processes"][0]["pid"]
        assert nsx(f"{name}-left", "ping", "-c", "2", "-i", "0.2", "10.2.0.10").returncode == 0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        m = re.search(r"^(\d+) packets captured", out, re.M)
        assert m and int(m.group(1)) >= 4  # 2 echo requests + 2 replies (+ ARP)
        icmp = subprocess.run(["tshark", "-r", str(pcap), "-Y", "icmp"], capture_output=True, text=True, timeout=60)
        assert len(icmp.stdout.splitlines()) == 4
        assert not os.path.exists(f"/proc/{tcpdump}") or "Z" in Path(f"/proc/{tcpdump}/stat").read_text().split()[2]
        st.reload()
        assert st.data["processes"] == []
    finally:
        cli("down", name)


def test_same_name_twice_at_once_one_wins() -> None:
    name = new_name()
    cmd = [sys.executable, "-m", "ipsecemu", "lab", "up", str(PAIR), "--name", name]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    try:
        results = [p.communicate(timeout=60) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 8], results  # LabError
        loser = next(err for p, (_, err) in zip(procs, results, strict=True) if p.returncode == 8)
        assert "already up" in loser and "Traceback" not in loser
        assert len(builder.orphan_netns(name)) == 4
    finally:
        cli("down", name)
    assert builder.orphan_netns(name) == []
