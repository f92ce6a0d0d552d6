"""``ipsecemu config``: check connection files and import Azure VPN device configurations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
              help="Insist on the gateway instances' private IPs (VPN over ExpressRoute; an error for a site "
                   "that only has public ones) or use the public ones; default: what the file says.")
@click.option("--local-address", help="The on-prem VPN device address to put in the connections (its IKE "
                                      "identity stays the site address of the file).")
@click.option("--site", help="Import only this site (vpnSiteConfiguration.Name); required for --lab when the "
                             "file has several sites.")
@click.option("--show-psk", is_flag=True, help="Write the PSKs into the output (default: env:IPSECEMU_PSK).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the connections YAML here instead of stdout.")
@click.option("--lab", "lab_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a runnable lab (CE, two MSEEs, hub, both instances, spokes) for the site here.")
@click.option("--static-routing", is_flag=True,
              help="With --lab: static routes instead of the routing: intent (BGP over ER and the tunnels).")
@click.option("--vpn-prefix", multiple=True, metavar="CIDR",
              help="With --lab: on-prem prefix sent over the VPN (repeatable; default 10.0.1.0/24).")
@click.option("--er-prefix", multiple=True, metavar="CIDR",
              help="With --lab: on-prem prefix advertised over ExpressRoute (repeatable; default 10.0.0.0/16).")
@click.option("--name", "lab_name", help="With --lab: the lab name (default: az-<site>).")
@click.option("--preference", type=click.Choice(["ExpressRoute", "VPN", "ASPath"]), default="ExpressRoute",
              show_default=True, help="With --lab (routing intent): the hub routing preference.")
def import_azure(file: Path, private_ip: bool | None, local_address: str | None, site: str | None,
                 show_psk: bool, output: Path | None, lab_out: Path | None, static_routing: bool,
                 vpn_prefix: tuple[str, ...], er_prefix: tuple[str, ...], lab_name: str | None,
                 preference: str) -> None:
    """Turn an Azure Virtual WAN VPN device configuration JSON into ipsecemu connections
    (one per site and gateway instance: two tunnels, active-active), or with --lab into a runnable lab.
    Without a custom policy the proposals are Azure's documented defaults."""
    from ipsecemu.config.azure import load_device_config  # lazy: CLI start-up
    from ipsecemu.config.connection_dump import dumps  # lazy: CLI start-up

    lab_only = [n for n, v in (("--static-routing", static_routing), ("--vpn-prefix", vpn_prefix),
                               ("--er-prefix", er_prefix), ("--name", lab_name)) if v]
    if lab_out is None and lab_only:
        raise click.UsageError(f"{lab_only[0]} only applies with --lab OUT.yaml")
    conns = load_device_config(file, use_private_ip=private_ip, local_address=local_address, site=site)
    if lab_out is not None:
        _write_lab(file, conns, site, lab_out, static_routing, vpn_prefix, er_prefix, lab_name, preference,
                   show_psk)
        if output is None:
            return
    text = dumps([c.config for c in conns], include_secret=show_psk)
    if output:
        output.write_text(text)
        click.echo(f"wrote {len(conns)} connection(s) to {output}", err=True)
    else:
        click.echo(text, nl=False)


def _write_lab(file: Path, conns: list[Any], site: str | None, out: Path, static: bool,
               vpn_prefix: tuple[str, ...], er_prefix: tuple[str, ...], name: str | None, preference: str,
               show_psk: bool) -> None:
    from ipsecemu.config import azure_lab  # lazy: CLI start-up

    opts = azure_lab.LabOptions(static=static, show_psk=show_psk, name=name, preference=preference,
                                vpn_prefixes=vpn_prefix or azure_lab.DEFAULT_VPN_PREFIXES,
                                er_prefixes=er_prefix or azure_lab.DEFAULT_ER_PREFIXES)
    chosen = azure_lab.site_connections(conns, str(file), site)
    lab = azure_lab.build_lab(chosen, str(file), opts)
    text = azure_lab.render_lab(lab, str(file), chosen, opts)
    if static:
        _check_lab(text, out, chosen[0].config.auth.secret)
    out.write_text(text)
    form = "static routes" if static else "routing intent"
    click.echo(f"wrote lab {lab['name']} ({form}) for site {chosen[0].site!r} to {out}", err=True)
    if not show_psk:
        click.echo(f"  export {azure_lab.PSK_ENV}=<the PSK from {file.name}> before 'ipsecemu lab up {out}'", err=True)


def _check_lab(text: str, out: Path, psk: bytes | None) -> None:
    """Run `lab check` on the generated lab before writing it: what we write must be runnable.  The
    PSK reference is resolved from the file's own PSK for this check only."""
    from ipsecemu.config.azure_lab import PSK_ENV  # lazy: CLI start-up
    from ipsecemu.lab import check  # lazy: pulls in the lab and IKE config stack

    old = os.environ.get(PSK_ENV)
    if old is None and psk:
        os.environ[PSK_ENV] = psk.decode(errors="replace")
    try:
        check.check_text(text, str(out))
    finally:
        if old is None:
            os.environ.pop(PSK_ENV, None)
