"""``ipsecemu bench macsec``: iperf3 TCP across the userspace MACsec link (each cipher) vs the plain
veth and vs strongSwan's libipsec tunnel, all in one run, with ratios.

Two netns joined by two veth pairs: one plain (addresses on the veth: the kernel's best case, GSO
on), one carrying MACsec (tap + ``ipsecemu macsec link run`` per end; 1500-byte frames on the phy as
on a real link, TCP super-packets on the tap cut and coalesced by the loop; ``--frames`` adds the
same link without that offload, frame by frame, for comparison).  The strongSwan baseline is :func:`ipsecemu.lab.strongswan.charon_pair`
(host - charon/libipsec = charon/libipsec - host, ESP-in-UDP AES-GCM-128).  Every process is
started and stopped by PID; the namespaces are removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.lab.worker import iperf
from ipsecemu.bench.procs import Procs

CIPHERS = ("GcmAes128", "GcmAes256", "GcmAesXpn128", "GcmAesXpn256")
TARGET = 3.0  # MACsec link vs strongSwan libipsec tunnel
ADDR = ("10.79.0.1", "10.79.0.2")  # taps (MACsec)
PLAIN = ("10.79.1.1", "10.79.1.2")  # plain veth
Say = Callable[[str], None]


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@contextmanager
def link_pair(prefix: str) -> Iterator[tuple[str, str]]:
    ns = (f"{prefix}a", f"{prefix}b")
    try:
        for n in ns:
            _ip("netns", "add", n)
        _ip("link", "add", "l_phy", "netns", ns[0], "type", "veth", "peer", "name", "l_phy", "netns", ns[1])
        _ip("link", "add", "p", "netns", ns[0], "type", "veth", "peer", "name", "p", "netns", ns[1])
        for i, n in enumerate(ns):
            _ip("-n", n, "tuntap", "add", "dev", "l", "mode", "tap")
            _ip("-n", n, "link", "set", "dev", "l_phy", "mtu", "1540", "up")
            for dev in ("l", "p", "lo"):
                _ip("-n", n, "link", "set", "dev", dev, "up")
            _ip("-n", n, "addr", "add", f"{ADDR[i]}/30", "dev", "l")
            _ip("-n", n, "addr", "add", f"{PLAIN[i]}/30", "dev", "p")
        yield ns
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


@contextmanager
def macsec_daemons(procs: Procs, ns: tuple[str, str], cipher: str, workdir: Path,
                   offload: bool = True) -> Iterator[list[Path]]:
    cak = os.urandom(32).hex()  # throw-away
    started = []
    status = []
    try:
        for n in ns:
            cfg = workdir / f"{n}.yaml"
            fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"cipher": cipher, "sci_state": "Enabled", "cak": cak, "ckn": "b0b0",
                           "offload": offload}, f)
            st = workdir / f"{n}.status.json"
            st.unlink(missing_ok=True)
            status.append(st)
            log = open(workdir / f"{n}.log", "ab")  # noqa: SIM115 - closed below
            try:
                started.append(procs.start(
                    ["ip", "netns", "exec", n, sys.executable, "-m", "ipsecemu", "macsec", "link", "run",
                     "--config", str(cfg), "--tap", "l", "--phy", "l_phy", "--status", str(st)],
                    stdout=log, stderr=subprocess.STDOUT))
            finally:
                log.close()
        deadline = time.monotonic() + 15
        while not all(_secured(s) for s in status):
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                raise BenchError(f"MACsec link ({cipher}) not secured; logs in {workdir}")
            time.sleep(0.05)
        yield status
    finally:
        for p in started:
            procs.stop(p)


def _secured(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("secured"))
    except (OSError, ValueError):
        return False


def run(*, duration: float, ciphers: tuple[str, ...], streams: int, say: Say,
        frames: bool = False) -> dict[str, Any]:
    from ipsecemu.lab.strongswan import charon_pair

    procs = Procs()
    rows: list[dict[str, Any]] = []
    prefix = "bm" + uuid.uuid4().hex[:5]
    try:
        with tempfile.TemporaryDirectory(prefix="ipsecemu-bench-macsec-") as tmp, link_pair(prefix) as ns:
            say("plain veth")
            gbps, rtx = iperf(procs, ns[0], ns[1], PLAIN[1], streams=streams, duration=duration)
            rows.append({"path": "plain veth (GSO)", "cipher": "", "mbps": gbps * 1000, "retransmits": rtx})
            for c in ciphers:
                for offload in (True, False) if frames else (True,):
                    say(f"MACsec {c}{'' if offload else ' (frame by frame)'}")
                    with macsec_daemons(procs, ns, c, Path(tmp), offload) as status:
                        gbps, rtx = iperf(procs, ns[0], ns[1], ADDR[1], streams=streams, duration=duration)
                        time.sleep(1.1)  # let the status files catch up
                        loops = [json.loads(s.read_text())["loop"] for s in status]
                    rows.append({"path": "ipsecemu MACsec link" + ("" if offload else " (frames)"), "cipher": c,
                                 "offload": offload, "mbps": gbps * 1000, "retransmits": rtx,
                                 "drops": sum(lp["validate_drop"] + lp["send_errors"] + lp["tap_tx_errors"]
                                              for lp in loops)})
        say("strongSwan libipsec tunnel (aes128gcm16)")
        with charon_pair(prefix + "s", esp_proposal="aes128gcm16") as pair:
            gbps, rtx = iperf(procs, pair.hosts[0], pair.hosts[1], pair.inside[1], streams=streams,
                              duration=duration)
            rows.append({"path": "strongSwan libipsec tunnel", "cipher": "aes128gcm16", "mbps": gbps * 1000,
                         "retransmits": rtx})
    finally:
        procs.stop_all()
    swan = next(r["mbps"] for r in rows if r["path"].startswith("strongSwan"))
    plain = rows[0]["mbps"]
    for r in rows:
        r["vs_strongswan"] = round(r["mbps"] / swan, 2) if swan else None
        r["vs_plain"] = round(r["mbps"] / plain, 3) if plain else None
    macsec = [r["vs_strongswan"] for r in rows if r.get("offload") and r["vs_strongswan"]]
    return {"duration": duration, "streams": streams, "cpus": os.cpu_count(), "rows": rows,
            "target": {"ratio": TARGET, "worst_macsec_vs_strongswan": min(macsec) if macsec else None,
                       "met": bool(macsec) and min(macsec) >= TARGET}}


def format_table(rep: dict[str, Any]) -> str:
    lines = [f"{'path':<30} {'cipher':<13} {'Mbit/s':>9} {'x strongSwan':>13} {'x plain':>8}"]
    for r in rep["rows"]:
        lines.append(f"{r['path']:<30} {r['cipher']:<13} {r['mbps']:>9.0f} {r['vs_strongswan'] or 0:>13.2f} "
                     f"{r['vs_plain'] or 0:>8.3f}")
    t = rep["target"]
    lines.append(f"target: MACsec >= {t['ratio']:g}x strongSwan libipsec: "
                 f"{'met' if t['met'] else 'NOT met'} (worst {t['worst_macsec_vs_strongswan']})")
    return "\n".join(lines)


def _missing() -> str | None:
    from ipsecemu.lab.strongswan import charon_available

    if os.geteuid() != 0:
        return "needs root (network namespaces): run as root or with sudo"
    for tool in ("iperf3", "ip", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return charon_available()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of a table.")
@click.option("--duration", type=click.FloatRange(1, 600), default=5.0, show_default=True,
              help="Seconds per iperf3 run.")
@click.option("--streams", type=click.IntRange(1, 64), default=1, show_default=True, help="Parallel TCP streams.")
@click.option("--ciphers", default=",".join(CIPHERS), show_default=True, help="MACsec ciphers, comma separated.")
@click.option("--frames", is_flag=True, help="Also run each cipher without the tap's TSO/GRO (frame by frame).")
def command(as_json: bool, duration: float, streams: int, ciphers: str, frames: bool) -> None:
    """iperf3 TCP across the MACsec link (each cipher) vs plain veth vs strongSwan libipsec."""
    chosen = tuple(c.strip() for c in ciphers.split(",") if c.strip())
    bad = [c for c in chosen if c not in CIPHERS]
    if not chosen or bad:
        raise click.BadParameter(f"unknown cipher {', '.join(bad) or '(none)'}; choose from {', '.join(CIPHERS)}",
                                 param_hint="--ciphers")
    reason = _missing()
    if reason:
        raise click.ClickException(reason)

    def say(msg: str) -> None:
        click.echo(f"bench macsec: {msg}", err=True)

    try:
        rep = run(duration=duration, ciphers=chosen, streams=streams, say=say, frames=frames)
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped and removed")
        raise SystemExit(130) from None
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(rep, indent=1) if as_json else format_table(rep))
