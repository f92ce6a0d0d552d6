"""``ipsecemu bench ike`` on the command line."""

from __future__ import annotations

import json

import click

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.ike.report import DEFAULT_DURATION, GROUPS, QUICK_DURATION, format_table
from ipsecemu.bench.ike.run import run
from ipsecemu.bench.rounds import DEFAULT_ROUNDS
from ipsecemu.lab.netns import NetnsError
from ipsecemu.strongswan.charon import CharonError

__all__ = ["command"]


def _groups(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if value is None:
        return list(GROUPS)
    items = [g.strip().lower() for g in value.split(",") if g.strip()]
    bad = [g for g in items if g not in GROUPS]
    if not items or bad:
        raise click.BadParameter(f"{', '.join(bad) or 'empty list'}: choose from {', '.join(GROUPS)}")
    return list(dict.fromkeys(items))


@click.command("ike")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results instead of a table.")
@click.option("--duration", type=click.FloatRange(0.2, 120), default=None,
              help=f"Seconds per pair and group [default: {DEFAULT_DURATION:g}, --quick: {QUICK_DURATION:g}].")
@click.option("--count", type=click.IntRange(1, 100000), default=None,
              help="Exactly N setups per pair and group (instead of --duration).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Setups in flight at once.")
@click.option("--groups", "groups", callback=_groups, default=None,
              help="DH groups, comma separated [default: ecp256,modp2048].")
@click.option("--quick", is_flag=True,
              help=f"About 10 s per round: {QUICK_DURATION:g} s per pair, group and round.")
@click.option("--rounds", type=click.IntRange(1, 100), default=DEFAULT_ROUNDS, show_default=True,
              help="Alternating rounds of the three pairs; ratios to strongSwan are the median over rounds "
                   "with their min-max.")
def command(as_json: bool, duration: float | None, count: int | None, concurrency: int, groups: list[str],
            quick: bool, rounds: int) -> None:
    """IKE_SA + Child SA setups/s and p50/p95 latency (PSK): ipsecemu<->ipsecemu,
    ipsecemu->strongSwan and strongSwan<->strongSwan, in two network namespaces, in alternating
    rounds (ratio: median of the per-round ratios, min-max).  Needs root."""
    if duration is not None and count is not None:
        raise click.UsageError("--duration and --count exclude each other")
    if count is None and duration is None:
        duration = QUICK_DURATION if quick else DEFAULT_DURATION
    try:
        results = run(groups=groups, duration=duration, count=count, concurrency=concurrency, rounds=rounds,
                      progress=lambda msg: click.echo(f"bench ike: {msg}", err=True))
    except (BenchError, NetnsError, CharonError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        click.echo(format_table(results, concurrency))
