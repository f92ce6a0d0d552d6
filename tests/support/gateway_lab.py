"""Two ipsecemu gateway daemons between two hosts in throw-away netns (root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecemu.lab.netns import Netns, ns_exec, wait_for

PSK = "gateway-test-psk"


@dataclass
class Gw:
    ns: str
    cfg: Path
    state: Path
    tun: str
    proc: subprocess.Popen | None = None
    args: tuple[str, ...] = ()

    @property
    def sock(self) -> Path:
        return self.state / "control.sock"

    def cli(self, *args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "ipsecemu", "sa", "--socket", str(self.sock), *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"sa {' '.join(args)} failed: {r.stdout}{r.stderr}\n{self.log()}")
        return r

    def sas(self) -> list[dict]:
        return json.loads(self.cli("list", "--json").stdout)

    def counters(self) -> dict:
        return json.loads(self.cli("counters", "--json").stdout)

    def log(self) -> str:
        p = self.state / "gateway.log"
        return p.read_text()[-4000:] if p.exists() else "(no log)"

    def start(self) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-m", "ipsecemu",
                                      "gateway", "run", str(self.cfg), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_for(lambda: self.sock.exists() or self.proc.poll() is not None, 15):
            raise AssertionError(f"gateway in {self.ns} did not start\n{self.log()}")
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway in {self.ns} exited: {self.proc.stderr.read()}")

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            return None


PROPOSALS = """\
    esp_proposals: aes128gcm16-modp2048
    ike_proposals: aes128gcm16-prfsha256-modp2048
"""


def gateway_yaml(node: str, state: Path, local: str, remote: str, lts: str, rts: str, tun: str, *,
                 encap: str, start: str, extra: str = "", proposals: str = PROPOSALS,
                 dpd: str = "{interval: 0}") -> str:
    return f"""\
node: {node}
state_dir: {state}
local_addresses: [{local}]
datapath: {{encapsulation: {encap}, batch: 32}}
connections:
  vpn:
    remote_address: {remote}
    psk: {PSK}
{proposals}    local_ts: [{lts}]
    remote_ts: [{rts}]
    start_action: {start}
    dpd: {dpd}
{extra}    tunnel: {{name: {tun}, mtu: 1400}}
"""


@dataclass
class Lab:
    left: str
    right: str
    a: Gw
    b: Gw
    mid: str  # the veth on a's side of the middle link


def build_lab(prefix: str, tmp: Path, net: Netns, *, encap: str = "udp", extra_a: str = "",
              extra_b: str = "", proposals: str = PROPOSALS, dpd_a: str = "{interval: 0}") -> Lab:
    left, a, b, right = (net.add(prefix + s) for s in ("l", "a", "b", "r"))
    net.veth(left, prefix + "lh", a, prefix + "ai", ("10.1.0.2/24",), ("10.1.0.1/24",))
    net.veth(a, prefix + "ao", b, prefix + "bo", ("192.0.2.1/24",), ("192.0.2.2/24",))
    net.veth(b, prefix + "bi", right, prefix + "rh", ("10.2.0.1/24",), ("10.2.0.2/24",))
    net.route(left, "10.2.0.0/24", gateway="10.1.0.1")
    net.route(right, "10.1.0.0/24", gateway="10.2.0.1")
    for ns in (a, b):
        net.sysctl(ns, "net.ipv4.ip_forward", "1")
    gws = []
    for node, ns, local, remote, lts, rts, start, extra, dpd in (
            ("a", a, "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24", "initiate", extra_a, dpd_a),
            ("b", b, "192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24", "listen", extra_b, "{interval: 0}")):
        state = tmp / node
        tun = prefix + "t" + node
        cfg = tmp / f"{node}.yaml"
        cfg.write_text(gateway_yaml(node, state, local, remote, lts, rts, tun, encap=encap, start=start,
                                    extra=extra, proposals=proposals, dpd=dpd))
        gws.append(Gw(ns, cfg, state, tun))
    return Lab(left, right, gws[0], gws[1], prefix + "ao")


@pytest.fixture
def lab_factory(unique_name: str, tmp_path: Path) -> Iterator:
    net = Netns()
    labs: list[Lab] = []

    def make(args: tuple[str, ...] = (), **kw: object) -> Lab:
        lab = build_lab(unique_name, tmp_path, net, **kw)  # type: ignore[arg-type]
        labs.append(lab)
        lab.a.args = lab.b.args = args
        lab.b.start()
        lab.a.start()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            for g in (lab.a, lab.b):
                g.stop()
        net.close()


def established(gw: Gw) -> bool:
    try:
        sas = gw.sas()
    except AssertionError:
        return False
    return any(s["state"] == "ESTABLISHED" and s["child_sas"] for s in sas)


def ping(ns: str, dst: str, count: int = 3, interval: float = 0.2, wait: int = 2) -> int:
    """Replies received."""
    r = ns_exec(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), dst,
                timeout=count * interval + wait + 10, check=False)
    for line in r.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def links(ns: str) -> str:
    return ns_exec(ns, "ip", "-o", "link").stdout


def routes(ns: str) -> str:
    return ns_exec(ns, "ip", "route").stdout


def up(lab: Lab) -> None:
    assert wait_for(lambda: established(lab.a) and established(lab.b), 20), lab.a.log() + lab.b.log()


def start_ping(ns: str, dst: str, count: int, interval: float = 0.02, size: int = 56) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                             "-W", "2", "-s", str(size), dst], stdout=subprocess.PIPE, text=True)


def received(proc: subprocess.Popen, timeout: float = 60) -> int:
    out, _ = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    raise AssertionError(out)


def child_spis(gw: Gw) -> list[str]:
    return [c["spi_in"] for s in gw.sas() for c in s["child_sas"]]
