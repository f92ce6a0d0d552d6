"""``ipsecemu sa``: list, rekey, terminate and inspect the SAs of a running gateway (control socket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ipsecemu.base.errors import ConfigError, ServiceError
from ipsecemu.commands.base import Group


def _socket(ctx: click.Context) -> Path:
    o = ctx.obj or {}
    if o.get("socket"):
        return Path(o["socket"])
    if o.get("node"):
        from ipsecemu.gateway.control import socket_path  # lazy: CLI start-up
        from ipsecemu.lab.state import default_lab, list_labs  # lazy: CLI start-up

        lab = o.get("lab") or default_lab()  # the lab `make lab` built, while it is up
        if not lab and len(list_labs()) == 1:
            lab = list_labs()[0]
        if lab:
            return socket_path(lab, o["node"])
        raise ConfigError("--node without --lab: no default lab is up and not exactly one lab is up; "
                          "give --lab LAB")
    raise ConfigError("say which gateway: --socket PATH, or [--lab LAB] --node NODE")


def _call(ctx: click.Context, cmd: str, **args: Any) -> Any:
    from ipsecemu.gateway.control import ControlError, request  # lazy: CLI start-up

    try:
        return request(_socket(ctx), cmd, **args)
    except ControlError as exc:  # until gateway/ derives its errors from base.errors
        raise ServiceError(str(exc)) from None


@click.group(cls=Group)
@click.option("--socket", "sock", type=click.Path(dir_okay=False, path_type=str),
              help="The gateway's control socket.")
@click.option("--lab", help="Lab name (with --node: /run/ipsecemu/<lab>/<node>/control.sock); default: the "
              "default lab ('make lab'), else the only lab up.")
@click.option("--node", help="Node name within the lab.")
@click.pass_context
def sa(ctx: click.Context, sock: str | None, lab: str | None, node: str | None) -> None:
    """List, rekey and terminate SAs of a running gateway."""
    ctx.obj = {"socket": sock, "lab": lab, "node": node}


@sa.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """The gateway's IKE and Child SAs (swanctl --list-sas layout)."""
    from ipsecemu.ike.render import render_json, render_text  # lazy: CLI start-up

    sas = _call(ctx, "list_sas")
    click.echo(render_json(sas) if as_json else render_text(sas), nl=as_json)


@sa.command()
@click.argument("target")
@click.pass_context
def rekey(ctx: click.Context, target: str) -> None:
    """Rekey the Child SAs of connection TARGET, or the SA with SPI TARGET (hex)."""
    for line in _call(ctx, "rekey", target=target):
        click.echo(f"rekeying {line}")


@sa.command()
@click.argument("target")
@click.pass_context
def terminate(ctx: click.Context, target: str) -> None:
    """Delete connection TARGET's IKE SAs (no automatic restart), or the SA with SPI TARGET."""
    for line in _call(ctx, "terminate", target=target):
        click.echo(f"terminating {line}")


@sa.command()
@click.argument("name")
@click.pass_context
def initiate(ctx: click.Context, name: str) -> None:
    """Start connection NAME (also lifts a previous terminate)."""
    click.echo(f"initiating {name}: IKE SPI {_call(ctx, 'initiate', target=name)}")


@sa.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def counters(ctx: click.Context, as_json: bool) -> None:
    """Data-path counters per connection and SA (from the C tables), and IKE counters."""
    res = _call(ctx, "counters")
    if as_json:
        click.echo(json.dumps(res, indent=2, sort_keys=True))
        return
    for name, c in res["connections"].items():
        click.echo(f"{name}: backend {c['backend']}, tun {c['tunnel']}, routes {' '.join(c['routes']) or '-'}")
        loop = c.get("loop") or {}
        if loop:
            click.echo("  loop   " + ", ".join(f"{k} {v}" for k, v in sorted(loop.items()) if v))
        for s in c["sas"]:
            i, o = s["in"], s["out"]
            drops_in = {k: v for k, v in i.items() if k not in ("packets", "bytes") and v}
            click.echo(f"  in  {s['spi_in']}: {i['packets']} packets, {i['bytes']} bytes"
                       + (f", drops {drops_in}" if drops_in else ""))
            click.echo(f"  out {s['spi_out']}: {o['packets']} packets, {o['bytes']} bytes")
    for addr, c in res["ike"].items():
        t = ", ".join(f"{k} {v}" for k, v in sorted(c["transport"].items()))
        click.echo(f"ike {addr}: {t or '-'}")


@sa.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Directory for esp_sa and ikev2_decryption_table (Wireshark UAT files, mode 0600).")
@click.pass_context
def keys(ctx: click.Context, out_dir: str) -> None:
    """Write the current ESP and IKE keys for Wireshark/tshark (only when asked; never logged)."""
    res = _call(ctx, "export_keys", dir=str(Path(out_dir).resolve()))
    click.echo(f"wrote {res['esp_sa']} ({res['esp_rows']} ESP SAs) and {res['ikev2_decryption_table']} "
               f"({res['ike_rows']} IKE SAs)")
