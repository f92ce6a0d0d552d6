"""``ipsecemu macsec``: the userspace MACsec link (ExpressRoute Direct, scenario S4)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from ipsecemu.base.errors import ConfigError, InputError, NeedsRootError, ServiceError
from ipsecemu.commands.base import Group


def _config(path: str):  # type: ignore[no-untyped-def]
    from ipsecemu.config.macsec_link import load_link_config  # lazy: CLI start-up

    try:
        return load_link_config(path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None  # the message names the file


@click.group(cls=Group)
def macsec() -> None:
    """MACsec (IEEE 802.1AE + MKA) links in userspace."""


@macsec.group()
def link() -> None:
    """One end of a MACsec-protected link: tap (L3 side) over a veth (phy)."""


@link.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML with the link's macsec mapping: cipher, sci_state, cak, ckn, replay_window, "
                   "validate, key_server_priority (Azure names).")
@click.option("--tap", required=True, help="The tap carrying the node's frames (addresses live there).")
@click.option("--phy", required=True, help="The interface the protected frames go out on (e.g. the veth).")
@click.option("--status", "status_path", type=click.Path(dir_okay=False),
              help="Write the link status (JSON, no keys) here, on every change and every second.")
@click.option("--keys-file", "keys_path", type=click.Path(dir_okay=False),
              help="Write the SAKs in use as MACsec SA JSON (mode 0600) for 'ipsecemu pcap decrypt'.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1, 256), help="Frames per batch.")
@click.option("-v", "--verbose", is_flag=True, help="Log every SA change (never keys).")
def run(config_path: str, tap: str, phy: str, status_path: str | None, keys_path: str | None, batch: int,
        verbose: bool) -> None:
    """Run MKA and the C data path for one link end until SIGTERM/Ctrl-C (SIGUSR1: rotate the SAK)."""
    import asyncio  # lazy: CLI start-up
    import logging  # lazy: CLI start-up

    cfg = _config(config_path)
    if os.geteuid() != 0:
        raise NeedsRootError("macsec link run needs root (tap and AF_PACKET sockets)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # no-op under cli.main
    if verbose:
        logging.getLogger("ipsecemu.macsec_link.daemon").setLevel(logging.INFO)
    from ipsecemu.macsec_link.daemon import LinkDaemon  # lazy: CLI start-up

    daemon = LinkDaemon(cfg, tap, phy, status_path=status_path, keys_path=keys_path, batch=batch)
    try:
        asyncio.run(daemon.run())
    finally:
        daemon.close()
    if daemon.failed:
        raise ServiceError(daemon.failed)


@link.command("check")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate a link config and print it (without the CAK)."""
    click.echo(json.dumps(_config(config_path).public(), indent=1))


def _status(path: str) -> dict[str, Any]:
    from ipsecemu.macsec_link.daemon import read_status  # lazy: CLI start-up

    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("macsec-*.status.json"))
        if len(files) != 1:
            raise InputError(f"{path}: expected one macsec-*.status.json, found {len(files)}")
        p = files[0]
    return read_status(p)  # a ConfigError: status 2


@link.command("status")
@click.argument("status_file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
def status(status_file: str, as_json: bool) -> None:
    """Show a running link end's status (from the file it writes with --status)."""
    st = _status(status_file)
    if as_json:
        click.echo(json.dumps(st, indent=1, sort_keys=True))
        return
    c = st["config"]
    tx = st.get("tx")
    lp = st["loop"]
    click.echo(f"{st['tap']} over {st['phy']}  sci {st['sci']}  {c['cipher']}  SCI {c['sci_state']}  "
               f"{'SECURED' if st['secured'] else 'NOT SECURED'}")
    click.echo(f"  key server: {'this end' if st['is_key_server'] else st['key_server'] or 'none'}  "
               f"live peers: {', '.join(st['live_peers']) or 'none'}  SAK installs: {st['sak_installs']}")
    if tx:
        click.echo(f"  tx: AN {tx['an']}  next PN {tx['next_pn']}  packets {tx['packets']}")
    for r in st["rx"]:
        click.echo(f"  rx: sci {r['sci']} AN {r['an']}  packets {r['packets']}  bad ICV {r['bad_icv']}  "
                   f"replay {r['replay']}")
    click.echo(f"  loop: tap->phy {lp['phy_tx']} (no SA {lp['no_tx_sa']})  phy->tap {lp['validated']} "
               f"(dropped {lp['validate_drop']}, unprotected {lp['unprotected_drop']})")


@link.command("rekey")
@click.argument("status_file", type=click.Path())
def rekey(status_file: str) -> None:
    """Force a SAK rotation on a running link end (the key server distributes a new SAK)."""
    st = _status(status_file)
    pid = int(st["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raise ServiceError(f"link daemon {pid} is not running") from None
    if b"macsec" not in cmdline:
        raise InputError(f"process {pid} is not a macsec link daemon (stale status file?)")
    os.kill(pid, signal.SIGUSR1)
    click.echo(f"asked link daemon {pid} for a new SAK")
