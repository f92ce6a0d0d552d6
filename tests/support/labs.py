"""Lab tests through the real CLI (root): `lab up`/`lab down` around a test, commands in a lab node's
netns, pings, an iperf3 server and a `lab capture` in the background."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.paths import REPO

# Three gateways around a router, a host behind each (drills, two responders); a format string with
# {name}, {gwa_extra} (more lines under gwa, e.g. "    sku: VpnGw1\n") and {gwc_kind}; the caller
# appends its own vpn: section (gwa 192.0.2.1, gwb 192.0.2.6, gwc 192.0.2.10; lans 10.1/2/3.0.0/24).
#
#   left ── gwa ══wan══ r ══ gwb ── right1
#                         ╚══ gwc ── right2
STAR = """\
name: {name}
nodes:
  left:
    kind: host
    addresses: {{eth0: 10.1.0.10/24}}
    routes: [{{dst: default, via: 10.1.0.1}}]
  gwa:
    kind: ipsecemu
{gwa_extra}    addresses: {{lan: 10.1.0.1/24, wan: 192.0.2.1/30}}
    routes: [{{dst: 192.0.2.0/24, via: 192.0.2.2}}]
  r:
    kind: router
    addresses: {{a: 192.0.2.2/30, b: 192.0.2.5/30, c: 192.0.2.9/30}}
  gwb:
    kind: ipsecemu
    addresses: {{wan: 192.0.2.6/30, lan: 10.2.0.1/24}}
    routes: [{{dst: 192.0.2.0/24, via: 192.0.2.5}}]
  gwc:
    kind: {gwc_kind}
    addresses: {{wan: 192.0.2.10/30, lan: 10.3.0.1/24}}
    routes: [{{dst: 192.0.2.0/24, via: 192.0.2.9}}]
  right1:
    kind: host
    addresses: {{eth0: 10.2.0.10/24}}
    routes: [{{dst: default, via: 10.2.0.1}}]
  right2:
    kind: host
    addresses: {{eth0: 10.3.0.10/24}}
    routes: [{{dst: default, via: 10.3.0.1}}]
links:
  - endpoints: [left:eth0, gwa:lan]
  - endpoints: [gwa:wan, r:a]
  - endpoints: [r:b, gwb:wan]
  - endpoints: [r:c, gwc:wan]
  - endpoints: [gwb:lan, right1:eth0]
  - endpoints: [gwc:lan, right2:eth0]
"""


def star_lab(name: str, vpn: str, gwa_extra: str = "", gwc_kind: str = "ipsecemu") -> str:
    """The STAR topology named ``name`` with ``vpn`` (the text of its top-level vpn: section)."""
    return STAR.format(name=name, gwa_extra=gwa_extra, gwc_kind=gwc_kind) + vpn


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``ipsecemu ARGS``; with ``check``, a non-zero exit fails the test with both outputs."""
    res = subprocess.run([sys.executable, "-m", "ipsecemu", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(f"ipsecemu {' '.join(args)}: rc {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def unique(prefix: str, hexlen: int = 6) -> str:
    """A lab name nobody else's test uses: ``prefix-<hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:hexlen]}"


@contextmanager
def lab_up(where: Path, text: str, name: str, timeout: float = 180) -> Iterator[str]:
    """Write ``text`` (a lab file) to ``where``/lab.yaml, bring it up, yield ``name``; `lab down` on
    the way out, whatever happened (a failed up has rolled back; the down then finds nothing)."""
    f = where / "lab.yaml"
    f.write_text(text)
    res = cli("lab", "up", str(f), check=False, timeout=timeout)
    try:
        assert res.returncode == 0, f"lab up {name} failed:\n{res.stdout}\n{res.stderr}"
        print(res.stdout)
        yield name
    finally:
        cli("lab", "down", name, check=False)


def ns(lab: str, node: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``argv`` in lab node ``node``'s netns (``<lab>-<node>``)."""
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *argv], capture_output=True, text=True,
                          timeout=timeout)


def pings(lab: str, src: str, dst: str, n: int = 3) -> int:
    """How many of ``n`` pings (0.2 s apart, 1 s wait) from node ``src`` to ``dst`` are answered."""
    out = ns(lab, src, "ping", "-n", "-c", str(n), "-i", "0.2", "-W", "1", dst).stdout
    return len(re.findall(r"time=", out))


def ping_within(lab: str, src: str, dst: str, tries: int = 20, pause: float = 0.5) -> bool:
    """Whether one ping from ``src`` to ``dst`` gets through within ``tries`` attempts (e.g. while the
    route agent puts tunnel routes back after a restart)."""
    for _ in range(tries):
        if pings(lab, src, dst, 1):
            return True
        time.sleep(pause)
    return False


@contextmanager
def iperf3_server(lab: str, node: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A one-shot iperf3 server in ``node``, stopped by PID on the way out if still running."""
    srv = subprocess.Popen(["ip", "netns", "exec", f"{lab}-{node}", "iperf3", "-s", "-1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # listening before the client connects
        yield srv
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=10)


@contextmanager
def capture(lab: str, where: str, pcap: Path, seconds: float) -> Iterator[None]:
    """`lab capture LAB/where -w pcap --duration seconds` around the block: started (its "capturing
    on" line read) before the block runs, finished and successful after it."""
    cap = subprocess.Popen([sys.executable, "-m", "ipsecemu", "lab", "capture", f"{lab}/{where}", "-w", str(pcap),
                            "--duration", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=REPO)
    try:
        assert cap.stderr is not None
        first = cap.stderr.readline()
        assert "capturing on" in first, first
        yield
        _, err = cap.communicate(timeout=seconds + 30)
        assert cap.returncode == 0, err
    finally:
        if cap.poll() is None:
            cap.terminate()
            cap.wait(timeout=10)
