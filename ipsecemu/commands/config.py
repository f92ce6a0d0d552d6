"""``ipsecemu config``: check connection files and import Azure VPN device configurations."""

from __future__ import annotations

from pathlib import Path

import click

from ipsecemu.commands.base import Group


@click.group(cls=Group)
def config() -> None:
    """Check IKE connection configs; import Azure Virtual WAN device configuration JSON."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (YAML connections) and print what would be negotiated."""
    from ipsecemu.config.connection import load  # lazy: CLI start-up
    from ipsecemu.config.connection_dump import summary  # lazy: CLI start-up

    conns = load(file)  # a ConfigError ends the command with status 2 (commands.base)
    click.echo(summary(conns), nl=False)
    click.echo(f"{file}: {len(conns)} connection(s) OK")


@config.command("import-azure")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--private-ip/--public-ip", default=None,
              help="Use the gateway instances' private IPs (VPN over ExpressRoute) or public ones; "
                   "default: what the file says.")
@click.option("--local-address", help="The on-prem VPN device address to put in the connections.")
@click.option("--show-psk", is_flag=True, help="Write the PSKs into the output (default: env:IPSECEMU_PSK).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the YAML here instead of stdout.")
def import_azure(file: Path, private_ip: bool | None, local_address: str | None, show_psk: bool,
                 output: Path | None) -> None:
    """Turn an Azure Virtual WAN VPN device configuration JSON into ipsecemu connections
    (one per site and gateway instance: two tunnels, active-active)."""
    from ipsecemu.config.azure import load_device_config  # lazy: CLI start-up
    from ipsecemu.config.connection_dump import dumps  # lazy: CLI start-up

    conns = load_device_config(file, use_private_ip=private_ip, local_address=local_address)
    text = dumps([c.config for c in conns], include_secret=show_psk)
    if output:
        output.write_text(text)
        click.echo(f"wrote {len(conns)} connection(s) to {output}", err=True)
    else:
        click.echo(text, nl=False)
