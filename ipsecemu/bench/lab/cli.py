"""``ipsecemu bench lab`` on the command line: options, the root/tool checks, SIGTERM handling, and
where the report goes (stdout table or JSON, OUT/lab.json, OUT/lab.png)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import click

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.lab.report import CIPHERS, format_table, report, write_chart
from ipsecemu.bench.lab.run import run
from ipsecemu.bench.rounds import DEFAULT_ROUNDS
from ipsecemu.strongswan.charon import charon_available

__all__ = ["command"]


def _streams(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(int(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of stream counts, got {value!r}") from None
    if not items or any(not 1 <= n <= 128 for n in items):
        raise click.BadParameter("each stream count must be 1..128")
    return tuple(dict.fromkeys(items))


def _ciphers(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(dict.fromkeys(x.strip().lower() for x in value.split(",") if x.strip()))
    bad = [x for x in items if x not in CIPHERS]
    if not items or bad:
        raise click.BadParameter(f"unknown cipher {', '.join(bad) or '(none)'}; choose from {', '.join(CIPHERS)}")
    return items


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces): run as root or with sudo"
    for tool in ("iperf3", "ip", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {'iperf3' if tool == 'iperf3' else 'iproute2'})"
    return charon_available()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout instead of a table.")
@click.option("--duration", type=click.FloatRange(1, 600), default=None,
              help="Seconds per iperf3 run [default: 10, --quick: 2].")
@click.option("--streams", callback=_streams, help="Parallel TCP streams per run, comma separated [default: 1,4].")
@click.option("--ciphers", callback=_ciphers, help=f"ESP ciphers, comma separated [default: {','.join(CIPHERS)}].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Directory for lab.json and lab.png.")
@click.option("--quick", is_flag=True, help="About 2 s per cell, 1 stream, AES-128-GCM (for tests).")
@click.option("--profile", is_flag=True,
              help="perf-sample the VPN processes in every VPN cell (needs perf): where their time goes, in the JSON.")
@click.option("--rounds", type=click.IntRange(1, 100), default=DEFAULT_ROUNDS, show_default=True,
              help="Alternating rounds of every path; ratios to strongSwan are the median over rounds with "
                   "their min-max.")
def command(as_json: bool, duration: float | None, streams: tuple[int, ...] | None,
            ciphers: tuple[str, ...] | None, out_dir: Path, quick: bool, profile: bool, rounds: int) -> None:
    """iperf3 TCP throughput: plain routing vs strongSwan vs ipsecemu, in one run.

    Four netns (host - gateway = gateway - host).  Paths: plain routed with and without GSO,
    strongSwan libipsec <-> libipsec, ipsecemu <-> ipsecemu (gateway daemons, C loop) and
    ipsecemu <-> strongSwan, each VPN path with every cipher, in alternating rounds.  Prints a table
    with the ratio to strongSwan <-> strongSwan (median of the per-round ratios, min-max), writes OUT/lab.json and a bar chart OUT/lab.png.  Progress goes to
    stderr.  Needs root, iperf3 and strongSwan (charon + kernel-libipsec).
    """
    reason = _missing() or (None if not profile or shutil.which("perf") else
                            "--profile needs perf (apt-get install linux-perf)")
    if reason:
        raise click.ClickException(reason)
    duration = duration if duration is not None else (2.0 if quick else 10.0)
    streams = streams or ((1,) if quick else (1, 4))
    ciphers = ciphers or (("aes128gcm16",) if quick else tuple(CIPHERS))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"--out {out_dir}: {exc.strerror}") from None

    def say(msg: str) -> None:
        click.echo(f"bench lab: {msg}", err=True)

    # SIGTERM unwinds like Ctrl-C, so every process and netns is removed; children forked by
    # pyroute2 (netns creation) inherit the handler and must simply die as they would have
    me = os.getpid()

    def on_term(sig: int, _frame: object) -> None:
        if os.getpid() != me:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        cells = run(duration=duration, streams=streams, ciphers=ciphers, say=say, profile=profile, rounds=rounds)
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped and removed")
        raise SystemExit(130) from None
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    rep = report(cells, duration, rounds)
    (out_dir / "lab.json").write_text(json.dumps(rep, indent=1) + "\n")
    write_chart(cells, out_dir / "lab.png")
    say(f"wrote {out_dir / 'lab.json'} and {out_dir / 'lab.png'}")
    if as_json:
        click.echo(json.dumps(rep, indent=1))
    else:
        click.echo(format_table(cells))
    if any(c.error for c in cells):
        raise SystemExit(1)
