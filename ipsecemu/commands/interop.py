"""``ipsecemu interop``: the ipsecemu <-> strongSwan matrix (see :mod:`ipsecemu.interop.matrix`)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict
from typing import Any

import click

from ipsecemu.base.errors import CheckFailed, NeedsRootError, SystemSetupError
from ipsecemu.commands.base import Command


def _cases(value: str | None) -> list[Any]:
    from ipsecemu.interop.matrix import CASES  # lazy: CLI start-up must not load the IKE core and pyroute2

    if not value:
        return list(CASES)
    wanted = [w.strip() for w in value.split(",") if w.strip()]
    picked = [c for c in CASES if any(c.name == w or c.name.split(" ")[0] == w for w in wanted)]
    unknown = [w for w in wanted if not any(c.name == w or c.name.split(" ")[0] == w for c in CASES)]
    if unknown or not picked:
        names = ", ".join(c.name.split(" ")[0] for c in CASES)
        raise click.BadParameter(f"unknown case {', '.join(unknown) or '(none)'}; known: {names}",
                                 param_hint="--cases")
    return picked


@click.command(cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON instead of a table.")
@click.option("--quick", is_flag=True, help="One ping each way per cell, 20 s per cell at most instead of 40 (for tests).")
@click.option("--cases", "cases_opt", metavar="NAME[,NAME...]",
              help="Only these rows (e.g. child-rekey,dpd,aes256-sha256-modp2048).  Default: all.")
@click.option("--initiator", type=click.Choice(["both", "ipsecemu", "charon"]), default="both", show_default=True,
              help="Which columns to run.")
def interop(as_json: bool, quick: bool, cases_opt: str | None, initiator: str) -> None:
    """Run the ipsecemu <-> strongSwan (charon + kernel-libipsec) interop matrix.

    Rows: IKE/ESP proposals, a CHILD_SA with PFS, CHILD_SA rekey, IKE rekey, delete, DPD.
    Columns: who initiates (ipsecemu or charon).  Each cell runs in fresh network namespaces and is
    checked through vici (ESTABLISHED/INSTALLED, same SPIs, algorithms and keys) and by pings through
    both ESP implementations.  Fails (CheckFailed) if any cell fails.  Needs root and strongSwan.
    """
    from ipsecemu.interop.matrix import (  # lazy: CLI start-up, IKE core
        COLUMNS,
        Cell,
        format_matrix,
        run_matrix,
    )
    from ipsecemu.strongswan.charon import charon_available  # lazy: CLI start-up must not load vici

    cases = _cases(cases_opt)
    if os.geteuid() != 0:
        raise NeedsRootError("needs root (network namespaces): run as root or with sudo")
    reason = charon_available()
    if reason:
        raise SystemSetupError(reason)
    columns = tuple(COLUMNS) if initiator == "both" else (initiator,)

    def progress(cell: Cell) -> None:
        mark = "✓" if cell.ok else "✗ " + cell.reason
        click.echo(f"interop: {cell.case} [{COLUMNS[cell.initiator]}] {mark} ({cell.seconds:.1f}s)", err=True)

    me = os.getpid()

    def on_term(sig: int, _frame: object) -> None:
        if os.getpid() != me:  # a child forked by pyroute2: just die
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        cells = run_matrix(cases, columns, pings=1 if quick else 2, limit=20 if quick else 40,
                           progress=progress)
    except KeyboardInterrupt:
        click.echo("interop: interrupted; the running cell's namespaces and charon were removed", err=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    if as_json:
        click.echo(json.dumps({"columns": COLUMNS, "cells": [asdict(c) for c in cells],
                               "passed": sum(c.ok for c in cells), "total": len(cells)}, indent=1,
                              ensure_ascii=False))
    else:
        click.echo(format_matrix(cells))
    if not all(c.ok for c in cells):
        raise CheckFailed(f"{sum(not c.ok for c in cells)} of {len(cells)} interop cell(s) failed")
