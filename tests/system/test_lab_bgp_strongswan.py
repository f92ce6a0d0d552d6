"""er-vwan-strongswan (root): a strongSwan CE (charon + kernel-libipsec, one tun ipsec0) that also runs
FRR and peers BGP inside both tunnels with the two hub instances.  Verdicts from captured packets
(`lab audit`, tcpdump on the CE's ER links); the failover figure is printed, not asserted tightly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ipsecemu.lab import svc_frr
from ipsecemu.lab.state import LabState, pid_alive
from ipsecemu.strongswan.charon import charon_available

from support.paths import REPO  # noqa: E402

LABS = REPO / "netns-labs"
PING_HZ = 20


# helpers as in test_lab_bgp.py (test modules do not import each other here)
def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _name(tag: str) -> str:
    return f"routing-{tag}-{uuid.uuid4().hex[:4]}"


def _up(path: Path, name: str) -> LabState:
    res = cli("up", str(path), "--name", name)
    assert res.returncode == 0, res.stdout + res.stderr
    print(res.stdout)
    return LabState.open(name)


def _down(name: str, st: LabState | None) -> None:
    recorded = [(p["pid"], p.get("start_time")) for p in (st.data["processes"] if st else [])]
    res = cli("down", name)
    assert res.returncode == 0, res.stderr
    assert [p for p, t in recorded if pid_alive(p, t)] == []


def _audit(name: str) -> dict[str, str]:
    res = cli("audit", name, "--json")
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        pytest.fail(f"no JSON from lab audit (rc {res.returncode}): {res.stdout}{res.stderr}")
    return {f"{f['from']}->{f['to']} {f['proto']}": f["observed"] for f in doc["flows"]}


def _ns(name: str, node: str) -> str:
    return f"{name}-{node}"


def _sh(ns: str, *cmd: str, timeout: float = 30) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout,
                          check=True).stdout


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


class Ping:
    """A 20 Hz ping in a node's netns; ``lost_seconds`` = unanswered requests / rate."""

    def __init__(self, ns: str, dst: str, seconds: float) -> None:
        count = int(seconds * PING_HZ)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-i", str(1 / PING_HZ), "-W", "1",
                                      "-c", str(count), dst], stdout=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, int, float]:
        out, _ = self.proc.communicate(timeout=120)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        sent, got = int(m.group(1)), int(m.group(2))
        return sent, got, (sent - got) / PING_HZ


def _capture(ns: str, iface: str, seconds: float, path: Path) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "timeout", str(seconds), "tcpdump", "-i", iface, "-n", "-w",
                    str(path)], capture_output=True, timeout=seconds + 10)


def _count(path: Path, bpf: str) -> int:
    res = subprocess.run(["tcpdump", "-r", str(path), "-n", bpf], capture_output=True, text=True, timeout=30)
    return len([x for x in res.stdout.splitlines() if x.strip()])


def _gateway_pid(st: LabState, node: str) -> int:
    st.reload()
    for p in st.data["processes"]:
        if p["node"] == node and "gateway" in " ".join(p["cmd"]):
            return int(p["pid"])
    raise AssertionError(f"no gateway recorded on {node}")


pytestmark = [pytest.mark.root, pytest.mark.skipif(charon_available() is not None, reason=str(charon_available()))]
INNER = "host 169.254.21.1 or host 169.254.21.2 or host 169.254.22.1 or host 169.254.22.2"


@pytest.fixture(scope="module")
def ss() -> Iterator[tuple[str, LabState]]:
    name = _name("swfrr")
    st = None
    try:
        st = _up(LABS / "er-vwan-strongswan.yaml", name)
        yield name, st
    finally:
        _down(name, st)


def _rx(name: str, node: str) -> int:
    """Packets the instance's tun handed to the kernel (decrypted from the CE)."""
    out = _sh(_ns(name, node), "cat", "/sys/class/net/vpn0/statistics/rx_packets")
    return int(out)


def test_strongswan_ce_bgp_inside_tunnels_audit_and_wire(ss: tuple[str, LabState], tmp_path: Path) -> None:
    name, st = ss
    peers = svc_frr.sessions(svc_frr.instance(st, "ce"))
    assert {"169.254.21.1", "169.254.22.1", "192.168.100.2", "192.168.100.6"} <= set(peers)
    assert {a: p["state"] for a, p in peers.items()} == {a: "Established" for a in peers}
    assert all(p["pfxRcd"] >= 1 for a, p in peers.items() if a.startswith("169.254."))
    # FRR, not charon, routes into ipsec0: the spoke via both instances' BGP next hops; the hub range
    # that holds the IKE peers stays on ER
    routes = _sh(_ns(name, "ce"), "ip", "route", "show", "10.51.231.0/24")
    assert "proto bgp" in routes and "169.254.21.1 dev ipsec0" in routes and "169.254.22.1 dev ipsec0" in routes
    assert "ipsec0" not in _sh(_ns(name, "ce"), "ip", "route", "get", "10.51.230.4")
    # the user-visible verdicts, from packets
    seen = _audit(name)
    assert seen["onprem1->spoke1 icmp"] == "encrypted" and seen["spoke1->onprem1 icmp"] == "encrypted", seen
    assert seen["onprem1->spoke1 tcp"] == "encrypted", seen
    assert seen["onprem2->spoke1 icmp"] == "clear", seen
    esp_total = 0
    for iface in ("msee1", "msee2"):
        pcap = tmp_path / f"{iface}.pcap"
        _capture(_ns(name, "ce"), iface, 4.0, pcap)
        er_bgp = _count(pcap, "tcp port 179")
        leaked = _count(pcap, f"({INNER}) or udp port 4784")
        esp = _count(pcap, "udp port 4500")
        esp_total += esp
        print(f"strongSwan CE ce:{iface} 4 s: ER BGP {er_bgp} frames in clear, ESP-in-UDP {esp}, "
              f"in-tunnel BGP/BFD in clear {leaked}")
        assert er_bgp > 0 and leaked == 0
    # the two IKE peers' ESP flows are ECMP-hashed over msee1/msee2 by address: both may land on one link
    assert esp_total > 0


def test_strongswan_ce_instance_sigkill(ss: tuple[str, LabState]) -> None:
    """The instance that carries on-prem -> Azure (libipsec's pick among identical selectors) is
    SIGKILLed: BGP/BFD withdraw it at once, but the CE keeps sending on its SA until charon's DPD
    removes that SA (routes do not steer libipsec).  Printed: both directions' loss."""
    name, st = ss
    before = {n: _rx(name, n) for n in ("hubgw0", "hubgw1")}
    _sh(_ns(name, "onprem1"), "ping", "-c", "20", "-i", "0.05", "-q", "10.51.231.4")
    carrier = max(before, key=lambda n: _rx(name, n) - before[n])
    other = "hubgw1" if carrier == "hubgw0" else "hubgw0"
    up = Ping(_ns(name, "onprem1"), "10.51.231.4", 40)
    down = Ping(_ns(name, "spoke1"), "10.0.1.10", 40)
    time.sleep(2)
    t0 = time.monotonic()
    os.kill(_gateway_pid(st, carrier), signal.SIGKILL)
    dead = "169.254.21.1" if carrier == "hubgw0" else "169.254.22.1"
    t_bgp = _wait(lambda: dead not in _sh(_ns(name, "ce"), "ip", "route", "show", "10.51.231.0/24"), 30,
                  "CE's FRR drops the dead instance's next hop")
    sent_u, got_u, lost_u = up.result()
    sent_d, got_d, lost_d = down.result()
    print(f"strongSwan CE: instance {carrier} SIGKILL: CE FRR drops it after {t_bgp:.2f} s; 20 Hz ping "
          f"onprem1->spoke1 lost {lost_u:.2f} s ({sent_u - got_u}/{sent_u}), spoke1->onprem1 lost "
          f"{lost_d:.2f} s ({sent_d - got_d}/{sent_d}); total {time.monotonic() - t0:.0f} s observed")
    assert got_u > 0 and got_d > 0  # both directions recover on {other}
    after = _rx(name, other)
    _sh(_ns(name, "onprem1"), "ping", "-c", "5", "-i", "0.1", "-q", "10.51.231.4")
    assert _rx(name, other) >= after + 5
