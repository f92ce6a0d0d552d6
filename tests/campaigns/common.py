"""Shared pieces of the resilience campaigns (resil1): labs brought up through the real CLI, the
gateways' control sockets, percentiles, RSS, and the short/long switch.

``IPSECEMU_CAMPAIGN=long`` (``make campaigns``) selects the long version of every campaign; without
it each campaign runs its short, bounded regression version inside ``make test``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ipsecemu.gateway.control import ControlError, request, socket_path

from support.labs import cli

LONG = os.environ.get("IPSECEMU_CAMPAIGN", "") == "long"


def pick(short: Any, long: Any) -> Any:
    """The short (``make test``) or long (``make campaigns``) value of a campaign knob."""
    return long if LONG else short


def progress(msg: str) -> None:
    """One progress line, shown at once even under pytest's capture (stderr of ``-s`` runs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ns(lab: str, node: str, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *argv], capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{node}: {' '.join(argv)}: rc {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def unique(prefix: str) -> str:
    """A lab name with the branch in it (namespace names derive from it)."""
    return f"r1{prefix}-{uuid.uuid4().hex[:4]}"


@contextmanager
def lab_up(yaml_text: str, tmp: Path, name: str) -> Iterator[str]:
    """`ipsecemu lab up` a lab from YAML text; always `lab down` (which stops only its own PIDs)."""
    f = tmp / f"{name}.yaml"
    f.write_text(yaml_text)
    progress(f"lab up {name}")
    t0 = time.monotonic()
    res = cli("lab", "up", str(f), "--name", name, check=False, timeout=240)
    try:
        if res.returncode != 0:
            raise AssertionError(f"lab up {name}: rc {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        progress(f"lab {name} up in {time.monotonic() - t0:.1f} s")
        yield name
    finally:
        cli("lab", "down", name, check=False)


def ctl(lab: str, node: str, cmd: str, **kw: Any) -> Any:
    """One request to a gateway's control socket (no CLI start-up per poll)."""
    return request(socket_path(lab, node), cmd, **kw)


def sas(lab: str, node: str) -> list[dict[str, Any]]:
    try:
        return list(ctl(lab, node, "list_sas"))
    except ControlError:
        return []


def established(lab: str, node: str, conn: str) -> dict[str, Any] | None:
    """The ESTABLISHED IKE SA of ``conn`` that has a Child SA, if any."""
    for s in sas(lab, node):
        if s.get("name") == conn and s.get("state") == "ESTABLISHED" and s.get("child-sas"):
            return s
    return None


def endpoint_counters(lab: str, node: str) -> dict[str, int]:
    """The IKE endpoint counters of every local address of a gateway, summed."""
    out: dict[str, int] = {}
    for v in ctl(lab, node, "counters")["ike"].values():
        for k, n in {**v["endpoint"], **v["transport"]}.items():
            out[k] = out.get(k, 0) + int(n)
    return out


def sa_counters(lab: str, node: str, conn: str) -> list[dict[str, Any]]:
    """The data-plane counters of each Child SA of ``conn`` (``in``/``out`` dicts, ``spi_in``)."""
    return list(ctl(lab, node, "counters")["connections"][conn]["sas"])


def gateway_pid(lab: str, node: str) -> int:
    return int(ctl(lab, node, "status")["pid"])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


def dist(values: list[float]) -> str:
    return (f"n={len(values)} p50 {pct(values, 50):.3f} s, p90 {pct(values, 90):.3f} s, "
            f"max {max(values):.3f} s")


def ping_summary(out: str) -> tuple[int, int]:
    """(sent, received) from ping's summary line."""
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    raise AssertionError(f"no ping summary in:\n{out[-1000:]}")
