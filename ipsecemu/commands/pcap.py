"""``ipsecemu pcap``: decrypt ESP and MACsec in captures (engine in :mod:`ipsecemu.pcap.decrypt`)."""

from __future__ import annotations

import click

from ipsecemu.base.errors import CheckFailed
from ipsecemu.commands.base import Group


@click.group(cls=Group)
def pcap() -> None:
    """Decrypt ESP and MACsec in packet captures."""


@pcap.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the decrypted capture (pcap).")
@click.option("--esp-sa", "esp_sa", type=click.Path(dir_okay=False, path_type=str),
              help="Wireshark esp_sa UAT file with the ESP keys.")
@click.option("--macsec-sa", "macsec_sa", type=click.Path(dir_okay=False, path_type=str),
              help='MACsec SA JSON: [{"sci", "an", "cipher", "sak", ["ssci", "salt"]}, ...].')
@click.option("--allow-failures", is_flag=True, help="Exit 0 even if some frames fail to authenticate.")
@click.option("--backend", type=click.Choice(["auto", "native", "reference"]), default="auto", show_default=True,
              help="Data-plane implementation to decrypt with.")
def decrypt(capture: str, output: str, esp_sa: str | None, macsec_sa: str | None, allow_failures: bool,
            backend: str) -> None:
    """Decrypt the ESP and MACsec frames of CAPTURE (pcap or pcapng) into the -o file.

    Decrypted frames keep their timestamps and link-layer header (EtherType fixed up); ESP
    tunnel mode yields the inner packet, transport mode the IP packet without ESP, MACsec the
    frame without SecTAG and ICV.  Other frames are copied unchanged.  Frames that fail
    authentication are listed and left out; the command then fails (CheckFailed) unless --allow-failures.
    """
    from ipsecemu.pcap.decrypt import decrypt_file  # lazy: CLI start-up
    from ipsecemu.pcap.macsec_sa import read_macsec_sa  # lazy: CLI start-up
    from ipsecemu.pcap.uat import read_esp_sa  # lazy: CLI start-up

    if not esp_sa and not macsec_sa:
        raise click.UsageError("give --esp-sa and/or --macsec-sa (nothing to decrypt with)")
    # KeyFileError/DecryptError are InputErrors, BackendUnavailable a SystemSetupError (commands.base)
    rows = read_esp_sa(esp_sa) if esp_sa else []
    sas = read_macsec_sa(macsec_sa) if macsec_sa else []
    summary = decrypt_file(capture, output, rows, sas, backend=backend)
    for w in summary.warnings:
        click.echo(f"warning: {w}", err=True)
    for f in summary.failures:
        click.echo(f"frame {f.frame}: {f.reason}", err=True)
    click.echo(summary.line())
    if summary.failed and not allow_failures:
        raise CheckFailed(f"{summary.failed} frame(s) failed to decrypt or authenticate")
