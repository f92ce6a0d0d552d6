"""IPSECEMU_RUN_DIR moves a gateway's default state dir and the control socket `ipsecemu sa --lab --node`
looks for together, as it moves the lab state: a gateway and its client meet under the same root."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ipsecemu.cli import cli
from ipsecemu.config import gateway as gwcfg
from ipsecemu.gateway.control import ControlServer, socket_path
from ipsecemu.lab.state import run_dir

from support.gateway_config import GOOD


@pytest.fixture
def run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "run"
    monkeypatch.setenv("IPSECEMU_RUN_DIR", str(root))
    return root


def test_defaults_follow_the_run_dir(run_root: Path) -> None:
    cfg = gwcfg.loads(GOOD)  # lab: demo, node: gw-a, no state_dir
    assert run_dir() == run_root
    assert cfg.state_dir == run_root / "demo" / "gw-a"
    assert socket_path("demo", "gw-a") == cfg.state_dir / "control.sock"


@pytest.fixture
def gateway_socket(run_root: Path) -> Iterator[Path]:
    """A control server where the daemon puts it (state_dir/control.sock), on a loop in a thread."""
    path = gwcfg.loads(GOOD).state_dir / "control.sock"
    assert path.is_relative_to(run_root)  # never the real /run/ipsecemu
    path.parent.mkdir(parents=True)
    loop = asyncio.new_event_loop()

    async def handler(req: dict[str, Any]) -> Any:
        return {"asked": req["cmd"]}

    server = ControlServer(path, handler)
    loop.run_until_complete(server.start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(timeout=10)
        loop.close()


def test_sa_cli_finds_the_gateway_under_the_run_dir(gateway_socket: Path) -> None:
    r = CliRunner().invoke(cli, ["sa", "--lab", "demo", "--node", "gw-a", "counters", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"asked": "counters"}


def test_sa_cli_names_the_run_dir_socket_when_none(run_root: Path) -> None:
    r = CliRunner().invoke(cli, ["sa", "--lab", "demo", "--node", "gw-a", "counters"])
    assert r.exit_code != 0 and f"no gateway control socket at {run_root}/demo/gw-a/control.sock" in r.output
    assert "Traceback" not in r.output
