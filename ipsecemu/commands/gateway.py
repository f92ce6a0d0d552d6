"""``ipsecemu gateway``: run one VPN gateway (``run CONFIG``) or validate its config (``check CONFIG``)."""

from __future__ import annotations

import click


class _UserError(click.ClickException):
    """A user mistake (config, permissions, addresses): message only, exit status 2."""

    exit_code = 2


@click.group()
def gateway() -> None:
    """Run one IPsec VPN gateway (IKE + C data plane)."""


def _load(config: str, state_dir: str | None):  # type: ignore[no-untyped-def]
    from ipsecemu.config.gateway import ConnectionConfigError, load

    try:
        return load(config, state_dir=state_dir)
    except ConnectionConfigError as exc:
        raise _UserError(str(exc)) from None


@gateway.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=str))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=str),
              help="Where the pid file, log and control socket live (default /run/ipsecemu/<lab>/<node>).")
def check(config: str, state_dir: str | None) -> None:
    """Validate CONFIG and print a summary (secrets are never shown)."""
    from ipsecemu.config.gateway import summary

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
    from ipsecemu.gateway.daemon import GatewayError
    from ipsecemu.gateway.daemon import run as run_gateway

    cfg = _load(config, state_dir)
    try:
        code = run_gateway(cfg, backend=backend)
    except GatewayError as exc:
        raise _UserError(str(exc)) from None
    raise SystemExit(code)
