"""The measuring side of ``ipsecemu bench lab``: commands in a netns, one iperf3 TCP test, and the
samplers that say where the time went (per-thread CPU of the VPN processes, the whole box's CPU split,
UDP socket and link drops per netns, perf profiles)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.procs import Procs

__all__ = ["PORT", "Say", "cpu_share", "host_share", "host_ticks", "iperf", "link_drops", "ns_argv", "ns_run",
           "perf_summary", "thread_cpu", "udp_rcvbuf_errors"]

PORT = 5201
Say = Callable[[str], None]


def ns_argv(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def ns_run(ns: str, *argv: str, timeout: float = 10.0) -> str:
    r = subprocess.run(ns_argv(ns, *argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {ns}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def udp_rcvbuf_errors(ns: str) -> int:
    """``Udp: RcvbufErrors`` of netns ``ns`` (datagrams dropped because a socket was full)."""
    lines = [ln.split() for ln in ns_run(ns, "cat", "/proc/net/snmp").splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return 0
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=False)).get("RcvbufErrors", 0))


def link_drops(ns: str) -> dict[str, int]:
    """Dropped-packet counters of every link in ``ns`` (``ip -s link``): a tun whose reader is
    too slow drops at its queue (tx), a full socket shows in :func:`udp_rcvbuf_errors` instead."""
    out: dict[str, int] = {}
    for link in json.loads(ns_run(ns, "ip", "-j", "-s", "link", "show") or "[]"):
        st = link.get("stats64", {})
        for d in ("rx", "tx"):
            out[f"{ns}:{link['ifname']} {d}"] = int(st.get(d, {}).get("dropped", 0))
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread ``"<tid> <comm>"`` of process ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{tid} {comm}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


_STAT = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def host_ticks() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (the box is shared: iperf3, both gateways, the
    forwarding kernel and anything else running)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return [int(x) for x in first[1:1 + len(_STAT)]]


def host_share(before: list[int], after: list[int]) -> dict[str, float]:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    v = dict(zip(_STAT, d, strict=True))
    return {"user": round(100 * (v["user"] + v["nice"]) / total, 1), "system": round(100 * v["system"] / total, 1),
            "softirq": round(100 * (v["softirq"] + v["irq"]) / total, 1),
            "idle": round(100 * (v["idle"] + v["iowait"]) / total, 1),
            # time the hypervisor gave to other guests: without it the shares do not add up to 100
            "steal": round(100 * v["steal"] / total, 1)}


def cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Per-thread CPU % of wall time between two :func:`thread_cpu` samples (busy threads only)."""
    share = {k: round(100 * (v - before.get(k, 0.0)) / wall, 1) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in share.items() if v >= 1.0), key=lambda kv: -kv[1]))


def iperf(procs: Procs, client_ns: str, server_ns: str, dst: str, *, streams: int, duration: float,
          mss: int | None = None) -> tuple[float, int]:
    """One iperf3 TCP test (client -> server); returns (Gbit/s received, retransmits)."""
    server = procs.start(ns_argv(server_ns, "iperf3", "-s", "-1", "-B", dst, "-p", str(PORT)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while f":{PORT}" not in ns_run(server_ns, "ss", "-ltnH"):
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                raise BenchError(f"iperf3 server in {server_ns} did not start: {err.strip()}")
            time.sleep(0.05)
        argv = ["iperf3", "-c", dst, "-p", str(PORT), "-t", f"{duration:g}", "-P", str(streams), "-J",
                "--connect-timeout", "3000"]
        if mss:
            argv += ["-M", str(mss)]
        client = procs.start(ns_argv(client_ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = client.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 client did not finish within {duration + 30:g}s") from None
        finally:
            procs.stop(client)
        try:
            res = json.loads(out)
        except ValueError:
            raise BenchError(f"iperf3 client: {(err or out).decode(errors='replace').strip()[:300]}") from None
        if res.get("error"):
            raise BenchError(f"iperf3: {res['error']}")
        end = res["end"]
        return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0))
    finally:
        procs.stop(server)


def perf_summary(data: Path) -> dict[str, Any]:
    """Where the sampled processes spent their time: share per binary (kernel, libcrypto, our C
    module, Python) and the hottest call-graph entries (children %, i.e. including callees)."""
    def report(*args: str) -> list[list[str]]:
        r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none", *args],
                           capture_output=True, text=True, timeout=60)
        return [ln.split() for ln in r.stdout.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    by_dso = {" ".join(f[1:]): float(f[0].rstrip("%")) for f in report("--no-children", "--sort", "dso")
              if f and f[0].endswith("%")}
    top = [{"total": float(f[0].rstrip("%")), "self": float(f[1].rstrip("%")), "symbol": " ".join(f[3:])}
           for f in report("--children", "--sort", "sym", "--percent-limit", "3")
           if len(f) >= 4 and f[0].endswith("%") and f[1].endswith("%")]
    return {"by_dso": by_dso, "top": top[:25]}

