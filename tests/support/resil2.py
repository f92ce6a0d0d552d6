"""Helpers of the resilience campaigns (branch resil2): rekey tallies from the gateways' own logs and
counters, a ping that runs in complete rounds (no half-answered tail), and process samples (RSS,
open fds) with a growth figure.  Used by tests/system/test_resilience_rekey.py and test_soak.py."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import threading
from dataclasses import dataclass, field

from ipsecemu.lab.netns import Netns

from support.gateway_lab import Gw, Lab


@dataclass
class PingRounds:
    """``ping -c N`` again and again until stopped: each round ends with its own summary, so a
    stop never counts a ping whose reply was still on its way as lost."""

    ns: str
    dst: str
    per_round: int = 50
    interval: float = 0.02
    sent: int = 0
    got: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            r = subprocess.run(["ip", "netns", "exec", self.ns, "ping", "-n", "-q", "-c", str(self.per_round),
                                "-i", str(self.interval), "-W", "2", self.dst], capture_output=True, text=True,
                               timeout=self.per_round * self.interval + 30)
            m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
            if m is None:
                raise AssertionError(f"ping said: {r.stdout}{r.stderr}")
            self.sent += int(m.group(1))
            self.got += int(m.group(2))

    def start(self) -> PingRounds:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> tuple[int, int]:
        """Ends after the running round: (sent, received)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        return self.sent, self.got


@dataclass
class Tally:
    """What one gateway did, from its log and ``sa counters --json``."""

    child_rekeys: int  # "Child SA rekeyed" lines (each is one new SA replacing an old one)
    ike_rekeys: int  # "IKE SA rekeyed" lines
    child_collisions: int  # simultaneous CREATE_CHILD_SA rekeys of one child (counted by the IKE core)
    ike_collisions: int  # simultaneous IKE SA rekeys
    encap_drop: int
    decap_drop: int


def tally(gw: Gw) -> Tally:
    log = (gw.state / "gateway.log").read_text()
    c = gw.counters()
    ep: dict[str, int] = {}
    for v in c["ike"].values():
        for k, n in v["endpoint"].items():
            ep[k] = ep.get(k, 0) + n
    loop = c["connections"]["vpn"]["loop"]
    return Tally(log.count("Child SA rekeyed"), log.count("IKE SA rekeyed"), ep.get("sa_child_rekey_collision", 0),
                 ep.get("sa_rekey_collision", 0), loop.get("encap_drop", 0), loop.get("decap_drop", 0))


def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def thirds(series: list[int]) -> tuple[float, float]:
    """Median of the first third and of the last third of a series (growth without the noise of
    single samples)."""
    k = max(1, len(series) // 3)
    return statistics.median(series[:k]), statistics.median(series[-k:])


def teardown(procs: list[subprocess.Popen[str]], lab: Lab | None, net: Netns) -> None:
    """Stop what a campaign started, by PID (iperf3, pings), then both gateways, then the netns."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(5)
    if lab is not None:
        lab.a.stop()
        lab.b.stop()
    net.close()
