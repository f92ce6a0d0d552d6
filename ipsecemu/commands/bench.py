"""``ipsecemu bench``: ``dataplane`` here; ``ike`` and ``lab`` load lazily from
``ipsecemu.bench.ike`` / ``ipsecemu.bench.lab`` and stay hidden until those modules exist."""

from __future__ import annotations

import importlib
import importlib.util
import json

import click

from ipsecemu.bench.dataplane import DEFAULT_BATCHES, DEFAULT_SIZES, format_table, run
from ipsecemu.commands.base import Group
from ipsecemu.dataplane import BackendUnavailable

LAZY = {
    "ike": "ipsecemu.bench.ike:command",
    "lab": "ipsecemu.bench.lab:command",
    "macsec": "ipsecemu.bench.macsec:command",
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class _BenchGroup(Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n, target in LAZY.items() if _exists(target.split(":")[0])]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY:
            mod_name, attr = LAZY[name].split(":")
            if not _exists(mod_name):
                return None
            cmd: click.Command | None = getattr(importlib.import_module(mod_name), attr)
            return cmd
        return super().get_command(ctx, name)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks: data plane transforms, IKE setup rate, lab throughput."""


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(int(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of integers, got {value!r}") from None
    low, high = (14, 9000) if param.name == "sizes" else (1, 4096)
    if not items or any(not low <= x <= high for x in items):
        raise click.BadParameter(f"each value must be {low}..{high}")
    return items


@bench.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results instead of a table.")
@click.option("--backend", type=click.Choice(["native", "reference"]), default="native", show_default=True)
@click.option("--duration", type=click.FloatRange(0.01, 60), default=None,
              help="Seconds per operation per size/batch cell [default: 0.4, --quick: 0.1].")
@click.option("--sizes", callback=_int_list, help="Packet sizes in bytes, comma separated [default: 64,512,1400].")
@click.option("--batches", callback=_int_list, help="Batch sizes, comma separated [default: 1,32,256].")
@click.option("--quick", is_flag=True, help="A few seconds: 1400-byte packets, batch 32, short runs.")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Alternating rounds of OpenSSL and transform runs; ratios are the median over rounds "
                   "with their min-max.")
def dataplane(as_json: bool, backend: str, duration: float | None, sizes: tuple[int, ...] | None,
              batches: tuple[int, ...] | None, quick: bool, rounds: int) -> None:
    """ESP and MACsec transform speed on one core, next to `openssl speed` AES-GCM.

    ESP AES-GCM-128/-256 and AES-CBC-256+HMAC-SHA-256 encap/decap, MACsec GCM-AES-128 and
    GCM-AES-XPN-256 protect/validate.  GCM rows show their ratio to OpenSSL at the same size:
    the median of per-round ratios over alternating rounds, and their min-max.
    """
    if quick:
        sizes = sizes or (1400,)
        batches = batches or (32,)
    try:
        results = run(backend=backend, sizes=sizes or DEFAULT_SIZES, batches=batches or DEFAULT_BATCHES,
                      duration=duration if duration is not None else (0.1 if quick else 0.4), rounds=rounds,
                      progress=lambda msg: click.echo(f"bench: {msg}", err=True))
    except BackendUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        click.echo(format_table(results))
