"""The lab builder and `ipsecemu lab` commands in real network namespaces (root)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsecemu.lab.capture import Capture
from ipsecemu.lab.state import LabState, run_dir
from ipsecemu.lab.topology import load

from support.nonroot import non_root_prefix
from support.paths import (
    REPO,  # noqa: E402
    underlay_copy,
)

# the builder's own tests run the lab files without their VPN (tests/system/test_lab_vpn.py covers that)
ER = underlay_copy(REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml", drop=(  # static S1
    "      - dst: 10.0.1.0/24\n        nexthops: [{via: 10.51.230.4}, {via: 10.51.230.5}]\n",))
PAIR = underlay_copy(REPO / "netns-labs" / "pair.yaml")
NETNS = Path("/run/netns")

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def lab_netns(lab: str) -> list[str]:
    return sorted(n for n in os.listdir(NETNS) if n.startswith(lab + "-")) if NETNS.is_dir() else []


def nsx(lab: str, node: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *cmd], capture_output=True, text=True,
                          timeout=timeout)


def ping(lab: str, node: str, dst: str, count: int = 2) -> subprocess.CompletedProcess[str]:
    return nsx(lab, node, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def assert_no_new_lab_links(before: set[str], topo_file: Path) -> None:
    """Other tests may add root-ns links concurrently: only names this lab uses count."""
    t = load(topo_file)
    ours = {ep.iface for lk in t.links for ep in (lk.a, lk.b)}
    ours |= {ep.iface for s in t.segments for ep in s.members} | {"br0"} | {f"p{i}" for i in range(16)}
    assert not (root_links() - before) & ours


def assert_nothing_left(lab: str) -> None:
    assert lab_netns(lab) == []
    assert not (run_dir() / lab).exists()


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def new_name() -> str:
    return "t" + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def er() -> Iterator[str]:
    name = new_name()
    res = cli("up", str(ER), "--name", name)
    try:
        assert res.returncode == 0, res.stderr
        assert f"lab {name} up" in res.stdout
        yield name
    finally:
        cli("down", name)
        assert_nothing_left(name)


# ---------------------------------------------------------------- er-vwan up


def test_er_netns_named_per_node(er: str) -> None:
    nodes = ["ce", "hub", "hubgw0", "hubgw1", "msee1", "msee2", "onprem1", "onprem2", "spoke1"]
    assert lab_netns(er) == sorted([f"{er}-{n}" for n in nodes] + [f"{er}--hubnet"])


@pytest.mark.parametrize("src,dst", [("spoke1", "10.0.1.10"), ("spoke1", "10.0.2.10"), ("onprem1", "10.51.231.4"),
                                     ("onprem2", "10.51.231.4"), ("onprem1", "10.51.230.4"), ("onprem1", "10.51.230.5")])
def test_ping_across_expressroute(er: str, src: str, dst: str) -> None:
    res = ping(er, src, dst)
    assert res.returncode == 0, res.stdout + res.stderr
    # spoke1 -> hub -> msee -> ce -> onprem: three routers each way, so TTL 64-3
    if "10.51.231" in dst or "10.0." in dst:
        assert "ttl=61" in res.stdout


def _route(lab: str, node: str, prefix: str) -> dict:
    out = nsx(lab, node, "ip", "-j", "route", "show", prefix).stdout
    routes = json.loads(out)
    assert len(routes) == 1, out
    return routes[0]


def _tx_packets(lab: str, node: str, dev: str) -> int:
    out = json.loads(nsx(lab, node, "ip", "-j", "-s", "link", "show", "dev", dev).stdout)
    return int(out[0]["stats64"]["tx"]["packets"])


def test_ecmp_routes_on_both_msee_paths(er: str) -> None:
    hub = _route(er, "hub", "10.0.0.0/16")
    assert {(h["gateway"], h["dev"]) for h in hub["nexthops"]} == {("192.168.101.1", "msee1"), ("192.168.101.5", "msee2")}
    ce = _route(er, "ce", "10.51.231.0/24")
    assert {(h["gateway"], h["dev"]) for h in ce["nexthops"]} == {("192.168.100.2", "msee1"), ("192.168.100.6", "msee2")}
    # and traffic really spreads: 64 UDP flows from spoke1 leave the hub over both MSEEs
    before = {d: _tx_packets(er, "hub", d) for d in ("msee1", "msee2")}
    sender = ("import socket\n"
              "for p in range(40000, 40064):\n"
              "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "    s.bind(('10.51.231.4', p)); s.sendto(b'x', ('10.0.1.10', 9)); s.close()\n")
    res = nsx(er, "spoke1", sys.executable, "-c", sender)
    assert res.returncode == 0, res.stderr
    delta = {d: _tx_packets(er, "hub", d) - before[d] for d in before}
    assert sum(delta.values()) >= 64
    assert delta["msee1"] > 0 and delta["msee2"] > 0, delta


def test_status_json(er: str) -> None:
    res = cli("status", er, "--json")
    assert res.returncode == 0, res.stderr
    (lab,) = json.loads(res.stdout)["labs"]
    assert lab["name"] == er and lab["status"] == "up"
    nodes = {n["name"]: n for n in lab["nodes"]}
    assert nodes["spoke1"]["netns"] == f"{er}-spoke1" and nodes["spoke1"]["netns_present"]
    addrs = {i["name"]: i["addresses"] for i in nodes["spoke1"]["interfaces"]}
    assert addrs["eth0"] == ["10.51.231.4/24"]
    assert nodes["hubgw0"]["vpn"] == "no daemon yet" and nodes["ce"]["vpn"] == "no daemon yet"
    assert "vpn" not in nodes["msee1"]
    hub_routes = {r["dst"]: r for r in nodes["hub"]["routes"]}
    assert len(hub_routes["10.0.0.0/16"]["nexthops"]) == 2
    assert len(lab["links"]) == 7 + 3  # 7 links + 3 segment ports
    text = cli("status", er)
    assert "ECMP" in text.stdout and "no daemon yet" in text.stdout


def test_exec(er: str) -> None:
    res = cli("exec", f"{er}/spoke1", "--", "ip", "-br", "addr", "show", "dev", "eth0")
    assert res.returncode == 0 and "10.51.231.4/24" in res.stdout
    assert cli("exec", f"{er}/spoke1", "--", "false").returncode == 1
    err = one_line_error(cli("exec", f"{er}/nosuch", "--", "true"))
    assert "has no node 'nosuch'" in err


def _icmp(pcap: Path, icmp_type: int) -> list[str]:
    """Independent reading of the capture: tshark's dissector."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"icmp.type=={icmp_type}", "-T", "fields",
                          "-e", "ip.src", "-e", "ip.dst"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def test_capture_on_ce_msee_links_sees_icmp(er: str, tmp_path: Path) -> None:
    st = LabState.open(er)
    caps = [Capture(st, "ce", dev, tmp_path / f"{dev}.pcap") for dev in ("msee1", "msee2")]
    for c in caps:
        c.start()
    try:
        st.reload()
        pids = {p["pid"] for p in st.data["processes"] if p["role"] == "capture"}
        assert pids == {c.proc.pid for c in caps if c.proc}
        assert ping(er, "spoke1", "10.0.1.10", count=3).returncode == 0
    finally:
        counts = [c.stop() for c in caps]
    assert sum(counts) >= 6
    requests = [r for c in caps for r in _icmp(c.path, 8)]
    replies = [r for c in caps for r in _icmp(c.path, 0)]
    assert requests == ["10.51.231.4\t10.0.1.10"] * 3
    assert replies == ["10.0.1.10\t10.51.231.4"] * 3
    st.reload()
    assert not [p for p in st.data["processes"] if p["role"] == "capture"]


def test_cli_capture_counts_and_keys(er: str, tmp_path: Path) -> None:
    pcap = tmp_path / "ce.pcap"
    proc = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{er}/ce:msee1", "--duration", "3",
                             "-w", str(pcap), "--keys", str(tmp_path / "keys")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stderr is not None
        assert "capturing on" in proc.stderr.readline()  # printed once tcpdump is listening
        assert ping(er, "ce", "192.168.100.2", count=3).returncode == 0
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    m = re.search(r"^(\d+) packets captured to (.+)$", out, re.M)
    assert m and int(m.group(1)) >= 6 and Path(m.group(2)) == pcap
    assert _icmp(pcap, 8) == ["192.168.100.1\t192.168.100.2"] * 3
    assert "keys: no SAs in this lab yet" in out


def test_second_lab_coexists(er: str) -> None:
    pair = new_name()
    res = cli("up", str(PAIR), "--name", pair)
    try:
        assert res.returncode == 0, res.stderr
        assert ping(pair, "left", "10.2.0.10").returncode == 0
        assert ping(er, "spoke1", "10.0.1.10").returncode == 0
        # with two labs up, a bare node name is ambiguous: a clear error, not a guess
        if len(os.listdir(run_dir())) > 1:
            assert "several labs are up" in one_line_error(cli("exec", "left", "--", "true"))
    finally:
        assert cli("down", pair).returncode == 0
    assert_nothing_left(pair)
    assert ping(er, "spoke1", "10.0.1.10").returncode == 0


# ---------------------------------------------------------------- teardown and rollback


def test_down_removes_netns_links_and_processes() -> None:
    name = new_name()
    links_before = root_links()
    assert cli("up", str(PAIR), "--name", name).returncode == 0
    daemon = stray = None
    try:
        # a registered "daemon" (as a gateway will register itself) and a stray process
        daemon = subprocess.Popen(["ip", "netns", "exec", f"{name}-gwa", "sleep", "600"])
        LabState.open(name).add_process(daemon.pid, "daemon", "gwa", ["sleep", "600"])
        stray = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "exec", f"{name}/right", "--",
                                  "sleep", "600"])
        time.sleep(0.3)
        assert stray.poll() is None
        status = json.loads(cli("status", name, "--json").stdout)["labs"][0]
        assert [p["alive"] for p in status["processes"]] == [True]
        assert {n["name"]: n.get("vpn") for n in status["nodes"]}["gwa"] == "running"
        res = cli("down", name)
        assert res.returncode == 0, res.stderr
        assert "stopped 2 processes" in res.stdout
        assert daemon.wait(timeout=5) is not None and stray.wait(timeout=5) is not None
        assert_nothing_left(name)
        assert_no_new_lab_links(links_before, PAIR)
        again = cli("down", name)
        assert again.returncode == 0 and "not up" in again.stdout
    finally:
        for p in (daemon, stray):
            if p and p.poll() is None:
                p.kill()
        cli("down", name)


BROKEN = {
    "syntax": ("- endpoints: [\"onprem1:eth0\", \"ce:lan1\"]", "- endpoints: [\"onprem1:eth0\", \"ce:lan1\""),
    "unknown node": ("[\"ce:msee2\", \"msee2:ce\"]", "[\"ce:msee2\", \"msee3:ce\"]"),
    "duplicate address": ("[10.51.230.5/24]", "[10.51.230.4/24]"),
    "bad CIDR": ("[10.0.2.10/24]", "[10.0.2.10/33]"),
    "unknown kind": ("kind: host", "kind: vm"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_yaml_creates_nothing(case: str, tmp_path: Path) -> None:
    old, new = BROKEN[case]
    name = new_name()
    text = ER.read_text().replace("name: er-vwan", f"name: {name}").replace(old, new, 1)
    f = tmp_path / "broken.yaml"
    f.write_text(text)
    links_before = root_links()
    err = one_line_error(cli("up", str(f)))
    assert re.match(rf"ipsecemu: {re.escape(str(f))}:\d+: ", err), err
    assert_nothing_left(name)
    assert_no_new_lab_links(links_before, ER)


def test_non_root_up_says_so() -> None:
    res = subprocess.run([*non_root_prefix(ER), sys.executable, "-m", "ipsecemu", "lab", "up", str(ER),
                          "--name", new_name()], capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 5  # NeedsRootError
    assert "needs root" in one_line_error(res)


def test_failing_step_rolls_back(tmp_path: Path) -> None:
    name = new_name()
    text = PAIR.read_text().replace("name: pair", f"name: {name}")
    text = text.replace("  right:\n    kind: host\n",
                        "  right:\n    kind: host\n    sysctls: {net.ipv4.no_such_knob: 1}\n")
    f = tmp_path / "bad-sysctl.yaml"
    f.write_text(text)
    links_before = root_links()
    res = cli("up", str(f))
    err = one_line_error(res)
    assert "sysctl" in err and "rolled back" in err
    assert "rolling back" in res.stdout  # progress showed the rollback
    assert_nothing_left(name)
    assert_no_new_lab_links(links_before, PAIR)


def _start_up_and_wait_for_netns(name: str, n: int) -> subprocess.Popen[str]:
    # pause after the netns exist so the signal always lands mid-build (a lab builds in ~0.3 s)
    env = {**os.environ, "IPSECEMU_TEST_PAUSE_AFTER": "_create_netns"}
    proc = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "up", str(ER), "--name", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    deadline = time.monotonic() + 20
    while len(lab_netns(name)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_up_rolls_back(sig: signal.Signals) -> None:
    name = new_name()
    proc = _start_up_and_wait_for_netns(name, 3)
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, out + err
        assert "interrupted" in err and "Traceback" not in err
        assert_nothing_left(name)
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("down", name)


def test_down_after_crash_mid_up() -> None:
    name = new_name()
    proc = _start_up_and_wait_for_netns(name, 5)
    proc.kill()  # SIGKILL: no rollback possible, the state file must be enough
    proc.communicate(timeout=10)
    assert lab_netns(name), "crash left nothing to clean (test did not exercise teardown)"
    res = cli("down", name)
    assert res.returncode == 0, res.stderr
    assert_nothing_left(name)
