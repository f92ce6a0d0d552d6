"""``ipsecemu bench macsec``: iperf3 TCP across the userspace MACsec link (each cipher) vs the plain
veth and vs strongSwan's libipsec tunnel, all in one run, with ratios.

Two netns joined by two veth pairs: one plain (addresses on the veth: the kernel's best case, GSO
on), one carrying MACsec (tap + ``ipsecemu macsec link run`` per end; 1500-byte frames on the phy as
on a real link, TCP super-packets on the tap cut and coalesced by the loop; ``--frames`` adds the
same link without that offload, frame by frame, for comparison).  The strongSwan baseline is
:func:`ipsecemu.lab.harness.charon_pair` (host - charon/libipsec = charon/libipsec - host, ESP-in-UDP
AES-GCM-128).  Every path is measured once per round in ``rounds`` alternating rounds; a row's ratio
is the median of its per-round ratios (:mod:`ipsecemu.bench.rounds`), with min-max.  Every process is
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
from ipsecemu.bench.rounds import DEFAULT_ROUNDS, check_rounds, median_index, per_round_ratios, spread
from ipsecemu.lab.harness import charon_pair
from ipsecemu.strongswan.charon import charon_available

CIPHERS = ("GcmAes128", "GcmAes256", "GcmAesXpn128", "GcmAesXpn256")
TARGET = 3.0  # MACsec link vs strongSwan libipsec tunnel
ADDR = ("10.79.0.1", "10.79.0.2")  # taps (MACsec)
PLAIN = ("10.79.1.1", "10.79.1.2")  # plain veth
SWAN = "strongSwan libipsec tunnel"  # the baseline path
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


def _one_round(procs: Procs, ns: tuple[str, str], pair: Any, tmp: Path, duration: float, ciphers: tuple[str, ...],
               streams: int, say: Say, frames: bool, tag: str) -> list[dict[str, Any]]:
    """Every path once: plain veth, each MACsec cipher (and frame by frame), strongSwan's tunnel."""
    rows: list[dict[str, Any]] = []
    say(f"plain veth{tag}")
    gbps, rtx = iperf(procs, ns[0], ns[1], PLAIN[1], streams=streams, duration=duration)
    rows.append({"path": "plain veth (GSO)", "cipher": "", "mbps": gbps * 1000, "retransmits": rtx})
    for c in ciphers:
        for offload in (True, False) if frames else (True,):
            say(f"MACsec {c}{'' if offload else ' (frame by frame)'}{tag}")
            with macsec_daemons(procs, ns, c, tmp, offload) as status:
                gbps, rtx = iperf(procs, ns[0], ns[1], ADDR[1], streams=streams, duration=duration)
                time.sleep(1.1)  # let the status files catch up
                loops = [json.loads(s.read_text())["loop"] for s in status]
            rows.append({"path": "ipsecemu MACsec link" + ("" if offload else " (frames)"), "cipher": c,
                         "offload": offload, "mbps": gbps * 1000, "retransmits": rtx,
                         "drops": sum(lp["validate_drop"] + lp["send_errors"] + lp["tap_tx_errors"]
                                      for lp in loops)})
    say(f"strongSwan libipsec tunnel (aes128gcm16){tag}")
    gbps, rtx = iperf(procs, pair.hosts[0], pair.hosts[1], pair.inside[1], streams=streams, duration=duration)
    rows.append({"path": SWAN, "cipher": "aes128gcm16", "mbps": gbps * 1000, "retransmits": rtx})
    return rows


def summarise(per_round: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (path, cipher) over the rounds: the round with the median ratio to strongSwan's
    tunnel in the same round (strongSwan's own row: its median Mbit/s), with min-max; ``vs_plain``
    from that same round."""
    by_round = [{(r["path"], r["cipher"]): r for r in rows} for rows in per_round]
    swan = [next((r["mbps"] for r in rows if r["path"] == SWAN), None) for rows in per_round]
    plain = [rows[0]["mbps"] if rows else None for rows in per_round]
    out: list[dict[str, Any]] = []
    for key in dict.fromkeys(k for r in by_round for k in r):
        rs = [r.get(key) for r in by_round]
        mbps = [r["mbps"] if r else 0.0 for r in rs]
        sp = spread(per_round_ratios(mbps, swan))
        pick = median_index(mbps) if key[0] == SWAN or sp.pick is None else sp.pick
        row = dict(rs[pick] or {"path": key[0], "cipher": key[1], "mbps": 0.0, "retransmits": 0})
        row["vs_strongswan"] = round(row["mbps"] / swan[pick], 2) if swan[pick] else None
        row["vs_plain"] = round(row["mbps"] / plain[pick], 3) if plain[pick] else None
        row.update(sp.rounded(2).fields(), mbps_rounds=mbps)
        out.append(row)
    return out


def run(*, duration: float, ciphers: tuple[str, ...], streams: int, say: Say, frames: bool = False,
        rounds: int = DEFAULT_ROUNDS) -> dict[str, Any]:
    """Both topologies (the MACsec/plain pair and strongSwan's) up for the whole run, every path
    measured once per round in ``rounds`` alternating rounds."""
    check_rounds(rounds)
    procs = Procs()
    prefix = "bm" + uuid.uuid4().hex[:5]
    per_round: list[list[dict[str, Any]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ipsecemu-bench-macsec-") as tmp, link_pair(prefix) as ns, \
                charon_pair(prefix + "s", esp_proposal="aes128gcm16") as pair:
            for rnd in range(1, rounds + 1):
                tag = f" (round {rnd}/{rounds})" if rounds > 1 else ""
                per_round.append(_one_round(procs, ns, pair, Path(tmp), duration, ciphers, streams, say, frames,
                                            tag))
    finally:
        procs.stop_all()
    rows = summarise(per_round)
    macsec = [r["vs_strongswan"] for r in rows if r.get("offload") and r["vs_strongswan"]]
    return {"duration": duration, "streams": streams, "rounds": rounds, "cpus": os.cpu_count(), "rows": rows,
            "target": {"ratio": TARGET, "worst_macsec_vs_strongswan": min(macsec) if macsec else None,
                       "met": bool(macsec) and min(macsec) >= TARGET}}


def format_table(rep: dict[str, Any]) -> str:
    lines = [f"{'path':<30} {'cipher':<13} {'Mbit/s':>9} {'x strongSwan':>13} {'min-max':>10} {'x plain':>8}"]
    for r in rep["rows"]:
        spread_ = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if r.get("ratio_min") is not None else "-"
        lines.append(f"{r['path']:<30} {r['cipher']:<13} {r['mbps']:>9.0f} {r['vs_strongswan'] or 0:>13.2f} "
                     f"{spread_:>10} {r['vs_plain'] or 0:>8.3f}")
    t = rep["target"]
    lines.append(f"target: MACsec >= {t['ratio']:g}x strongSwan libipsec: "
                 f"{'met' if t['met'] else 'NOT met'} (worst {t['worst_macsec_vs_strongswan']})")
    return "\n".join(lines)


def _missing() -> str | None:
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
@click.option("--rounds", type=click.IntRange(1, 100), default=DEFAULT_ROUNDS, show_default=True,
              help="Alternating rounds of every path; ratios are the median over rounds with their min-max.")
def command(as_json: bool, duration: float, streams: int, ciphers: str, frames: bool, rounds: int) -> None:
    """iperf3 TCP across the MACsec link (each cipher) vs plain veth vs strongSwan libipsec.

    Every path once per round, in alternating rounds; ratios are the median of the per-round ratios."""
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
        rep = run(duration=duration, ciphers=chosen, streams=streams, say=say, frames=frames, rounds=rounds)
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped and removed")
        raise SystemExit(130) from None
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(rep, indent=1) if as_json else format_table(rep))
