"""The ``ipsecemu`` command line.  Each command lives in its own module and is imported only
when used, so ``ipsecemu --help`` is fast and one command's import error cannot break another."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ipsecemu.base.errors import EXIT_INTERRUPTED
from ipsecemu.commands.base import Group

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "pcap": "ipsecemu.commands.pcap:pcap",
    "bench": "ipsecemu.commands.bench:bench",
    "lab": "ipsecemu.commands.lab:lab",
    "gateway": "ipsecemu.commands.gateway:gateway",
    "sa": "ipsecemu.commands.sa:sa",
    "interop": "ipsecemu.commands.interop:interop",
    "config": "ipsecemu.commands.config:config",
    "macsec": "ipsecemu.commands.macsec:macsec",
}

HELP = {
    "pcap": "Decrypt ESP and MACsec in packet captures.",
    "bench": "Benchmarks: data plane transforms, IKE setup rate, lab throughput.",
    "lab": "Bring network-namespace labs up and down, inspect and capture them.",
    "gateway": "Run one IPsec VPN gateway (IKE + C data plane).",
    "sa": "List, rekey and terminate SAs of a running gateway.",
    "interop": "Run the ipsecemu <-> strongSwan interop matrix.",
    "config": "Check IKE connection configs; import Azure VPN device configs.",
    "macsec": "Run and inspect MACsec links (userspace SecY + MKA).",
}


class LazyGroup(Group):
    """A group whose subcommands are imported on first use (errors mapped as in commands.base)."""

    def __init__(self, *args: Any, lazy: dict[str, str], lazy_help: dict[str, str] | None = None,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lazy = lazy
        self._lazy_help = lazy_help or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            mod_name, attr = self._lazy[name].split(":")
            try:
                mod = importlib.import_module(mod_name)
            except ImportError as exc:
                if exc.name and exc.name.startswith(mod_name):
                    return None
                raise
            cmd: click.Command | None = getattr(mod, attr)
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self._lazy_help:
                rows.append((name, self._lazy_help[name]))
            else:
                cmd = self.get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(60)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, lazy_help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ipsecemu")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """ipsecemu — userspace IPsec/IKEv2 + MACsec emulator for ExpressRoute labs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # outside any command (while click parses or imports one)
        click.echo("ipsecemu: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
