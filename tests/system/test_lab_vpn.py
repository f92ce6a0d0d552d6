"""The VPN lab as a user runs it (`ipsecemu lab up/status/capture/down` as subprocesses, root):
S1 over ExpressRoute with two active-active tunnels, failover, the strongSwan variant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ipsecemu.lab.capture import pcap_flows
from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.strongswan.charon import charon_available

from support.paths import REPO  # noqa: E402

ER = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan.yaml"  # static-route S1 (route agent)
ER_SS = REPO / "tests" / "unit" / "lab" / "static" / "er-vwan-strongswan.yaml"  # static routes + agent
ONPREM1, ONPREM2, SPOKE1 = "10.0.1.10", "10.0.2.10", "10.51.231.4"

pytestmark = pytest.mark.root


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def nsx(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def _leftovers(name: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in ns.splitlines() if ln.startswith(f"{name}-")]


@pytest.fixture
def lab(unique_name: str, tmp_path: Path) -> Iterator[callable]:
    """``lab(file, **config_overrides)`` brings a lab up under a unique name; always torn down,
    and the teardown is checked: no netns, no process, no state dir left."""
    name = unique_name
    recorded: list[tuple[int, int | None]] = []

    def up(path: Path, dpd: dict | None = None) -> str:
        src = path
        if dpd is not None:
            data = yaml.safe_load(path.read_text())
            for c in data["vpn"]["connections"]:
                c["config"] = {**c["config"], "dpd": dpd}
            src = tmp_path / path.name
            src.write_text(yaml.safe_dump(data))
        res = cli("up", str(src), "--name", name)
        assert res.returncode == 0, res.stdout + res.stderr
        st = LabState.open(name)
        recorded.extend((p["pid"], p.get("start_time")) for p in st.data["processes"])
        return name

    try:
        yield up
    finally:
        res = cli("down", name)
        assert res.returncode == 0, res.stderr
        assert _leftovers(name) == []
        assert not (LabState(name).dir).exists()
        assert not (Path("/tmp/ipsecemu-charon") / name).exists()
        assert [p for p, st in recorded if pid_alive(p, st)] == []


def _counters(name: str, node: str) -> dict[str, int]:
    """Packets in+out per connection of a gateway, from its control socket."""
    res = subprocess.run([sys.executable, "-m", "ipsecemu", "sa", "--lab", name, "--node", node, "counters", "--json"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    out = {}
    for conn, c in json.loads(res.stdout)["connections"].items():
        out[conn] = sum(s["in"]["packets"] + s["out"]["packets"] for s in c["sas"])
    return out


def _status(name: str) -> dict:
    res = cli("status", name, "--json")
    assert res.returncode == 0, res.stderr
    (lb,) = json.loads(res.stdout)["labs"]
    return lb


# ---------------------------------------------------------------- S1


@pytest.mark.slow  # ~15-25 s: lab up, traffic, capture, lab down
def test_s1_tunnels_esp_only_for_onprem1_keys_decrypt(lab: callable, tmp_path: Path) -> None:
    name = lab(ER)
    lb = _status(name)
    tunnels = [t for t in lb["vpn"]["tunnels"] if t["node"] == "ce"]
    assert sorted(t["conn"] for t in tunnels) == ["ce-hubgw0", "ce-hubgw1"]
    assert all(t["state"] == "ESTABLISHED" and t["child_sas"][0]["state"] == "INSTALLED" for t in tunnels)
    assert lb["vpn"]["warnings"] == []
    assert "er-vwan-lab-only-psk" not in json.dumps(lb)
    # the PSK sits only in the 0600 gateway config
    cfg = LabState(name).dir / "ce" / "gateway.yaml"
    assert cfg.stat().st_mode & 0o077 == 0

    before = _counters(name, "ce")
    assert nsx(f"{name}-onprem1", "ping", "-c", "3", "-i", "0.2", "-W", "2", SPOKE1).returncode == 0
    assert nsx(f"{name}-spoke1", "ping", "-c", "3", "-i", "0.2", "-W", "2", ONPREM1).returncode == 0
    after = _counters(name, "ce")
    assert sum(after.values()) - sum(before.values()) >= 12  # 6 echo requests + 6 replies, all through tunnels

    # capture both CE-MSEE links (ECMP may use either) while both pairs talk
    caps, pcaps = [], []
    for iface in ("msee1", "msee2"):
        pcap = tmp_path / f"{iface}.pcap"
        args = [sys.executable, "-m", "ipsecemu", "lab", "capture", f"{name}/ce:{iface}", "-w", str(pcap),
                "--duration", "3"]
        if iface == "msee1":
            args += ["--keys", str(tmp_path / "keys")]
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert p.stderr is not None and "capturing on" in p.stderr.readline()
        caps.append(p)
        pcaps.append(pcap)
    assert nsx(f"{name}-onprem1", "ping", "-c", "8", "-i", "0.1", "-W", "1", SPOKE1).returncode == 0
    assert nsx(f"{name}-onprem2", "ping", "-c", "8", "-i", "0.1", "-W", "1", SPOKE1).returncode == 0
    outs = [p.communicate(timeout=30)[0] for p in caps]
    assert all(p.returncode == 0 for p in caps)
    assert "keys: wrote" in outs[0] and "tshark" in outs[0]

    flows: dict = {}
    for pcap in pcaps:
        for k, v in pcap_flows(pcap).items():
            flows[k] = flows.get(k, 0) + v
    pair = {(ONPREM1, SPOKE1), (SPOKE1, ONPREM1)}
    assert sum(v for (s, d, _), v in flows.items() if (s, d) in pair) == 0  # never in clear on ER
    esp = sum(v for (s, d, k), v in flows.items() if k == "esp-in-udp" and "172.24.127.211" in (s, d))
    assert esp >= 16
    clear = sum(v for (s, d, k), v in flows.items() if k == "icmp" and {s, d} == {ONPREM2, SPOKE1})
    assert clear == 16  # onprem2 <-> spoke1 rides ER in clear (S1)

    # an independent dissector agrees: tshark sees no onprem1 packet without keys ...
    for pcap in pcaps:
        plain = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"ip.addr=={ONPREM1}"], capture_output=True,
                               text=True, timeout=60)
        assert plain.stdout.strip() == ""
    # ... and with the exported keys it decrypts the ESP and finds the inner ICMP
    keys = tmp_path / "keys"
    assert (keys / "esp_sa").stat().st_mode & 0o077 == 0
    ws = tmp_path / "xdg" / "wireshark"
    ws.mkdir(parents=True)
    for f in ("esp_sa", "ikev2_decryption_table"):
        (ws / f).write_text((keys / f).read_text())
    inner = 0
    for pcap in pcaps:
        res = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                              "-Y", f"icmp && ip.src=={ONPREM1} && ip.dst=={SPOKE1}", "-T", "fields", "-e", "esp.spi"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
        inner += len([ln for ln in res.stdout.splitlines() if ln.strip()])
    assert inner == 8  # every echo request, found inside ESP


# ---------------------------------------------------------------- active-active and failover

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9000))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(2048); s.sendto(d, a)
"""

PROBE = r"""
import json, select, socket, sys, time
dst, flows, period, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
socks = []
for i in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 41000 + i)); s.setblocking(False)
    socks.append(s)
sent, got = {}, set()
t0 = time.monotonic(); r = 0
while time.monotonic() - t0 < duration:
    start = time.monotonic()
    for i, s in enumerate(socks):
        s.sendto(f"{r}:{i}".encode(), (dst, 9000)); sent[(r, i)] = start - t0
    while time.monotonic() < start + period:
        ready, _, _ = select.select(socks, [], [], max(0.0, start + period - time.monotonic()))
        for s in ready:
            try:
                d = s.recv(64).decode().split(":"); got.add((int(d[0]), int(d[1])))
            except OSError:
                pass
    r += 1
time.sleep(0.3)
for s in socks:
    try:
        while True:
            d = s.recv(64).decode().split(":"); got.add((int(d[0]), int(d[1])))
    except OSError:
        pass
print(json.dumps({"sent": [[k[0], k[1], t] for k, t in sent.items()], "got": sorted(got)}))
"""


def _daemon_pid(name: str, node: str) -> tuple[int, int | None]:
    st = LabState.open(name)
    (p,) = [p for p in st.data["processes"] if p["node"] == node and p["role"] == "daemon"]
    return p["pid"], p.get("start_time")


@pytest.mark.slow  # ~15-25 s: lab up, traffic, capture, lab down
def test_active_active_then_failover_to_instance1(lab: callable) -> None:
    dpd_interval, dpd_timeout = 1, 3
    name = lab(ER, dpd={"interval": dpd_interval, "timeout": dpd_timeout})
    echo = subprocess.Popen(["ip", "netns", "exec", f"{name}-spoke1", sys.executable, "-c", ECHO],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        # several flows: the CE (table 100) and the hub (10.0.1.0/24) spread them over both instances
        h0, h1 = _counters(name, "hubgw0")["ce-hubgw0"], _counters(name, "hubgw1")["ce-hubgw1"]
        res = nsx(f"{name}-onprem1", sys.executable, "-c", PROBE, SPOKE1, "16", "0.05", "1.0")
        first = json.loads(res.stdout)
        assert len(first["got"]) == len(first["sent"])  # nothing lost while both are up
        d0 = _counters(name, "hubgw0")["ce-hubgw0"] - h0
        d1 = _counters(name, "hubgw1")["ce-hubgw1"] - h1
        assert d0 > 0 and d1 > 0, (d0, d1)  # both tunnels carry traffic
        print(f"\nactive-active: hubgw0 {d0} packets, hubgw1 {d1} packets")

        # kill Instance0's daemon (no DELETE sent) while 16 flows keep probing
        probe = subprocess.Popen(["ip", "netns", "exec", f"{name}-onprem1", sys.executable, "-c", PROBE, SPOKE1,
                                  "16", "0.05", "10.0"], stdout=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(1.5)
        pid, start = _daemon_pid(name, "hubgw0")
        killed_at = 1.5
        os.kill(pid, signal.SIGKILL)
        out, _ = probe.communicate(timeout=40)
        res2 = json.loads(out)
        got = {tuple(x) for x in res2["got"]}
        lost = [(r, i, t) for r, i, t in res2["sent"] if (r, i) not in got]
        last_loss = max((t for _, _, t in lost), default=killed_at) - killed_at
        print(f"failover: {len(lost)} of {len(res2['sent'])} probes lost; last loss {last_loss:.2f} s after the "
              f"kill (DPD {dpd_interval} s / {dpd_timeout} s)")
        assert not pid_alive(pid, start)
        assert last_loss <= dpd_interval + dpd_timeout + 2.0  # within the DPD timeout (+ agent poll, CI slack)
        # the last 3 s: every probe answered, all through Instance1
        tail = [(r, i) for r, i, t in res2["sent"] if t > killed_at + dpd_interval + dpd_timeout + 2]
        assert tail and all(k in got for k in tail)
        routes = {(r["netns"], r["dst"]): r["nexthops"] for r in _status(name)["vpn"]["routes"]}
        assert routes[(f"{name}-hub", "10.0.1.0/24")] == ["10.51.230.5"]
        assert routes[(f"{name}-ce", "10.51.231.0/24")] == ["vpn1"]
        c1 = _counters(name, "hubgw1")["ce-hubgw1"]
        assert nsx(f"{name}-onprem1", "ping", "-c", "3", "-i", "0.2", "-W", "2", SPOKE1).returncode == 0
        assert _counters(name, "hubgw1")["ce-hubgw1"] >= c1 + 6
    finally:
        if echo.poll() is None:
            os.kill(echo.pid, signal.SIGTERM)
        echo.wait(5)


# ---------------------------------------------------------------- strongSwan on-prem


@pytest.mark.slow
@pytest.mark.skipif(charon_available() is not None, reason=str(charon_available()))
def test_strongswan_ce_passes_traffic_both_ways(lab: callable, tmp_path: Path) -> None:
    name = lab(ER_SS)
    # `lab up` ran the plan `--dry-run` shows: the files it wrote are the dry run's, byte for byte
    res = cli("up", str(ER_SS), "--name", name, "--dry-run", "--out", str(tmp_path / "dry"), "--json")
    assert res.returncode == 0, res.stderr
    files = [f["path"] for f in json.loads(res.stdout)["files"]]
    assert sorted(files) == ["ce/swanctl.conf", "hubgw0/gateway.yaml", "hubgw1/gateway.yaml", "vpn-plan.json"]
    for f in files:
        assert (LabState(name).dir / f).read_text() == (tmp_path / "dry" / f).read_text(), f
    lb = _status(name)
    ce = [t for t in lb["vpn"]["tunnels"] if t["node"] == "ce"]
    assert sorted(t["conn"] for t in ce) == ["ce-hubgw0", "ce-hubgw1"] and all(t["kind"] == "strongswan" for t in ce)
    h = {n: sum(_counters(name, n).values()) for n in ("hubgw0", "hubgw1")}
    assert nsx(f"{name}-onprem1", "ping", "-c", "4", "-i", "0.2", "-W", "2", SPOKE1).returncode == 0
    assert nsx(f"{name}-spoke1", "ping", "-c", "4", "-i", "0.2", "-W", "2", ONPREM1).returncode == 0
    moved = sum(sum(_counters(name, n).values()) - h[n] for n in h)
    assert moved >= 16  # 8 requests + 8 replies decrypted/encrypted by the ipsecemu instances
    # onprem2 is not in charon's selectors and still reaches spoke1 over ER in clear
    assert nsx(f"{name}-onprem2", "ping", "-c", "2", "-i", "0.2", "-W", "2", SPOKE1).returncode == 0
    lb = _status(name)
    charon_out = sum(c["packets_out"] for t in lb["vpn"]["tunnels"] if t["node"] == "ce" for c in t["child_sas"])
    assert charon_out >= 8


def test_broken_vpn_config_rolls_back(unique_name: str, tmp_path: Path) -> None:
    """A bad proposal makes `lab up` fail before anything is built (the `lab check` it runs first),
    naming the user's file:line:field, leaving nothing."""
    text = ER.read_text().replace("dh_group: DHGroup14", "dh_group: DHGroup99", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    res = cli("up", str(bad), "--name", unique_name)
    try:
        assert res.returncode != 0
        line = next(i + 1 for i, ln in enumerate(text.splitlines()) if "DHGroup99" in ln)
        assert f"{bad}:{line}: vpn.connections[0].config.ipsec_policy.dh_group: must be one of" in res.stderr, \
            res.stderr
        assert "building" not in res.stdout
        assert "DHGroup99" in res.stderr and "Traceback" not in res.stderr
        assert _leftovers(unique_name) == [] and not LabState(unique_name).dir.exists()
    finally:
        if _leftovers(unique_name):
            cli("down", unique_name)


# ---------------------------------------------------------------- S3


@pytest.mark.slow  # ~15-25 s: lab up, traffic, capture, lab down
def test_s3_same_prefix_over_er_goes_in_clear_and_warns(lab: callable, tmp_path: Path) -> None:
    name = lab(REPO / "tests" / "unit" / "lab" / "static" / "er-vwan-s3.yaml")
    lb = _status(name)
    assert any(w.startswith("10.0.1.0/24 reachable over ER without VPN") for w in lb["vpn"]["warnings"])
    text = cli("status", name)
    assert "WARNING: 10.0.1.0/24 reachable over ER without VPN" in text.stdout
    caps = []
    for iface in ("msee1", "msee2"):
        p = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{name}/ce:{iface}", "-w",
                              str(tmp_path / f"{iface}.pcap"), "--duration", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert p.stderr is not None and "capturing on" in p.stderr.readline()
        caps.append(p)
    assert nsx(f"{name}-spoke1", "ping", "-c", "5", "-i", "0.1", "-W", "1", ONPREM1).returncode == 0
    for p in caps:
        p.communicate(timeout=30)
    flows: dict = {}
    for iface in ("msee1", "msee2"):
        for k, v in pcap_flows(tmp_path / f"{iface}.pcap").items():
            flows[k] = flows.get(k, 0) + v
    # Azure -> on-prem uses ER in clear (the S3 pitfall); on-prem -> Azure still uses the tunnels
    assert flows.get((SPOKE1, ONPREM1, "icmp"), 0) == 5
    assert flows.get((ONPREM1, SPOKE1, "icmp"), 0) == 0


def test_sigterm_while_waiting_for_tunnels_rolls_back(unique_name: str) -> None:
    """SIGTERM after the gateways started: every daemon stopped by PID, no netns, no state left."""
    p = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "up", str(ER), "--name", unique_name],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        assert p.stdout is not None
        seen = ""
        while "vpn: ce: ipsecemu gateway pid" not in seen:  # the initiator starts last (responders listen first)
            line = p.stdout.readline()
            assert line, seen
            seen += line
        pids = [(x["pid"], x.get("start_time")) for x in LabState.open(unique_name).data["processes"]]
        assert len(pids) == 3  # the three gateways (the agent is not started yet)
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=30)[0]
        assert p.returncode == 130 and "rolled back" in out
        assert [pid for pid, st in pids if pid_alive(pid, st)] == []
        assert _leftovers(unique_name) == [] and not LabState(unique_name).dir.exists()
    finally:
        if p.poll() is None:
            p.kill()
        if _leftovers(unique_name):
            cli("down", unique_name)
