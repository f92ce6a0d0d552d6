"""``ipsecemu gateway``: run one VPN gateway (``run CONFIG``) or validate its config (``check CONFIG``)."""

from __future__ import annotations

import os

import click

from ipsecemu.base.errors import NeedsRootError, SystemSetupError
from ipsecemu.commands.base import Group


@click.group(cls=Group)
def gateway() -> None:
    """Run one IPsec VPN gateway (IKE + C data plane)."""


def _load(config: str, state_dir: str | None):  # type: ignore[no-untyped-def]
    from ipsecemu.config.gateway import load  # lazy: CLI start-up

    return load(config, state_dir=state_dir)  # ConnectionConfigError is a ConfigError: status 2


@gateway.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=str))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=str),
              help="Where the pid file, log and control socket live (default /run/ipsecemu/<lab>/<node>).")
def check(config: str, state_dir: str | None) -> None:
    """Validate CONFIG and print a summary (secrets are never shown)."""
    from ipsecemu.config.gateway import summary  # lazy: CLI start-up

    click.echo(summary(_load(config, state_dir)), nl=False)


@gateway.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=str))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=str),
              help="Where the pid file, log and control socket live (default /run/ipsecemu/<lab>/<node>).")
@click.option("--backend", type=click.Choice(["auto", "native", "reference"]), default="auto", show_default=True,
              help="Data-plane implementation (native = the C loop; reference = Python, slow path).")
def run(config: str, state_dir: str | None, backend: str) -> None:
    """Run the gateway of CONFIG until SIGTERM/SIGINT (then DELETE the SAs, remove tun/routes, exit 0).

    Control it with 'ipsecemu sa ...'; logs go to <state dir>/gateway.log (and stderr with -v)."""
    from ipsecemu.gateway.daemon import GatewayError  # lazy: CLI start-up
    from ipsecemu.gateway.daemon import run as run_gateway  # lazy: CLI start-up

    cfg = _load(config, state_dir)
    if os.geteuid() != 0:  # the daemon's first check too; here so that it ends with NeedsRootError's status
        raise NeedsRootError("gateway run needs root (tun devices, routes, UDP 500/4500); try sudo")
    try:
        code = run_gateway(cfg, backend=backend)
    except GatewayError as exc:  # host setup refused (address, port, device); until gateway/ has families
        raise SystemSetupError(str(exc)) from None
    raise SystemExit(code)
