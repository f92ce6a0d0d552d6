"""``ipsecemu lab impair|link|node``: failure drills on a running lab (registered on the ``lab`` group)."""

from __future__ import annotations

import os
import time

import click

from ipsecemu.base.errors import LabError, NeedsRootError
from ipsecemu.commands.base import Command
from ipsecemu.lab.state import LabState, LabStateError

__all__ = ["DRILL_COMMANDS"]


def _open(name: str) -> LabState:
    if os.geteuid() != 0:
        raise NeedsRootError("lab drills need root (network namespaces); run them with sudo")
    try:
        return LabState.open(name)
    except LabStateError as exc:
        raise LabError(str(exc)) from None


@click.command("impair", cls=Command)
@click.argument("name", metavar="LAB")
@click.argument("endpoint", metavar="NODE:IFACE")
@click.option("--delay", help="One-way delay, e.g. 20ms.")
@click.option("--jitter", help="Uniform jitter around the delay, e.g. 5ms.")
@click.option("--loss", help="Loss, e.g. 1%.")
@click.option("--reorder", help="Frames sent at once, ahead of the delayed ones, e.g. 2%.")
@click.option("--duplicate", help="Duplicated frames, e.g. 0.5%.")
@click.option("--corrupt", help="Frames with one bit flipped after the Ethernet header, e.g. 0.1%.")
@click.option("--rate", help="Rate limit (token bucket), e.g. 650mbit.")
@click.option("--limit", help="Frames queued in the element at most.")
@click.option("--overhead", help="Bytes added to each frame for the rate (negative: count less, as netem).")
@click.option("--direction", type=click.Choice(["both", "out", "in"]), default="both", show_default=True,
              help="out: from NODE:IFACE to its peer; in: towards it.")
@click.option("--clear", is_flag=True, help="Remove the impairment (of --direction).")
def impair_cmd(name: str, endpoint: str, direction: str, clear: bool, **opts: str | None) -> None:
    """Change a link's impairment at run time; settings not given are kept.  Without settings or
    --clear: show the link's settings and counters."""
    from ipsecemu.lab import drills  # lazy: CLI start-up
    from ipsecemu.lab.impair_ctl import find, request  # lazy: CLI start-up

    st = _open(name)
    values = {k: v for k, v in opts.items() if v is not None}
    if values and clear:
        raise click.UsageError("give settings or --clear, not both")
    if values or clear:
        answer = drills.impair(st, endpoint, values, direction, clear)
    else:
        answer = request(find(st, endpoint)[0], {"op": "get"})
    for line in drills.describe(st, endpoint, answer):
        click.echo(line)


@click.command("link", cls=Command)
@click.argument("name", metavar="LAB")
@click.argument("endpoint", metavar="NODE:IFACE")
@click.argument("action", type=click.Choice(["down", "up"]))
def link_cmd(name: str, endpoint: str, action: str) -> None:
    """Take one end of a link down (its peer loses carrier) or bring it up again."""
    from ipsecemu.lab import drills  # lazy: CLI start-up

    drills.link_set(_open(name), endpoint, action == "up")
    click.echo(f"{endpoint}: {action}")


@click.command("node", cls=Command)
@click.argument("name", metavar="LAB")
@click.argument("node")
@click.argument("action", type=click.Choice(["stop", "start", "restart"]))
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="start/restart of a VPN node: seconds to wait for its tunnels (0: do not wait).")
def node_cmd(name: str, node: str, action: str, wait_s: float) -> None:
    """Stop, start or restart the daemons of a node (gateway, charon, MACsec link ends, routing
    daemons): by PID, no kill -9.  After a start, waits for the node's tunnels and prints the time."""
    from ipsecemu.lab import drills  # lazy: CLI start-up

    st = _open(name)
    if action in ("stop", "restart"):
        procs = drills.node_stop(st, node)
        click.echo(f"node {node}: stopped {len(procs)} daemon(s)"
                   + (f" ({', '.join(str(p['pid']) for p in procs)})" if procs else ""))
    if action in ("start", "restart"):
        st.reload()
        t0 = time.monotonic()
        drills.node_start(st, node, click.echo)
        if wait_s and st.data.get("nodes", {}).get(node) in ("ipsecemu", "strongswan"):
            took = drills.wait_tunnels(st, node, wait_s)
            if took is None:
                raise LabError(f"node {node}: tunnels not re-established within {wait_s:g} s "
                               f"(see ipsecemu lab status {name})")
            click.echo(f"node {node}: tunnels re-established {time.monotonic() - t0:.2f} s after the start")


DRILL_COMMANDS = (impair_cmd, link_cmd, node_cmd)
