"""``ipsecemu sa`` without a gateway, and against a stand-in control server speaking the real
protocol (ControlServer): clear errors, JSON/text rendering, the socket's permissions."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ipsecemu.gateway.control import ControlError, ControlServer, request, socket_path


def sa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipsecemu", "sa", *args], capture_output=True, text=True, timeout=30)


def test_no_gateway_is_a_clear_error(tmp_path: Path) -> None:
    r = sa("--socket", str(tmp_path / "nope.sock"), "list")
    assert r.returncode != 0 and "no gateway control socket" in r.stderr and "Traceback" not in r.stderr


def test_which_gateway_must_be_said() -> None:
    r = sa("list")
    assert r.returncode == 2 and "--socket PATH, or [--lab LAB] --node NODE" in r.stderr


def test_node_without_lab_needs_a_default_lab(tmp_path: Path) -> None:
    """--node alone: the default lab (make lab), else the only lab up; here (a private, empty run
    dir) neither, so it says so instead of guessing."""
    r = subprocess.run([sys.executable, "-m", "ipsecemu", "sa", "--node", "ce", "list"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "IPSECEMU_RUN_DIR": str(tmp_path)})
    assert r.returncode == 2 and "no default lab is up" in r.stderr and "Traceback" not in r.stderr


def test_lab_node_path() -> None:
    assert socket_path("lab1", "gw-a") == Path("/run/ipsecemu/lab1/gw-a/control.sock")


SAS = [{"name": "vpn", "uniqueid": 1, "version": 2, "state": "ESTABLISHED", "local-host": "192.0.2.1",
        "local-port": 4500, "local-id": "192.0.2.1", "remote-host": "192.0.2.2", "remote-port": 4500,
        "remote-id": "192.0.2.2", "initiator": True, "initiator-spi": "0102030405060708",
        "responder-spi": "1112131415161718", "proposal": "aes128gcm16-prfsha256-modp2048", "established": 5,
        "child-sas": [{"name": "vpn", "uniqueid": 7, "reqid": 1, "state": "INSTALLED", "mode": "TUNNEL",
                       "protocol": "ESP", "encap": True, "spi-in": "c0ffee01", "spi-out": "c0ffee02",
                       "proposal": "aes128gcm16", "bytes-in": 840, "packets-in": 10, "bytes-out": 840,
                       "packets-out": 10, "install-time": 5, "local-ts": ["10.1.0.0/24"],
                       "remote-ts": ["10.2.0.0/24"], "backend": "native"}]}]


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real ControlServer on its own thread, answering like a gateway would."""
    seen: list[dict[str, Any]] = []

    async def handler(req: dict[str, Any]) -> Any:
        seen.append(req)
        if req["cmd"] == "list_sas":
            return SAS
        if req["cmd"] == "rekey":
            if req["target"] != "vpn":
                raise ControlError(f"no SA with SPI {req['target']}")
            return ["child c0ffee01"]
        raise ControlError("unknown command")

    path = tmp_path / "control.sock"
    loop = asyncio.new_event_loop()
    srv = ControlServer(path, handler)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    yield path, seen
    asyncio.run_coroutine_threadsafe(srv.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def test_socket_is_owner_only_and_list_renders(server) -> None:  # type: ignore[no-untyped-def]
    path, seen = server
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = sa("--socket", str(path), "list")
    assert text.returncode == 0, text.stderr
    assert "vpn: #1, ESTABLISHED, IKEv2, 0102030405060708_i* 1112131415161718_r" in text.stdout
    assert "TUNNEL-in-UDP" in text.stdout and "in  c0ffee01" in text.stdout
    data = json.loads(sa("--socket", str(path), "list", "--json").stdout)
    assert data[0]["child_sas"][0]["spi_in"] == "c0ffee01" and data[0]["child_sas"][0]["packets_out"] == 10
    assert [r["cmd"] for r in seen] == ["list_sas", "list_sas"]


def test_errors_from_the_gateway_are_shown(server) -> None:  # type: ignore[no-untyped-def]
    path, _seen = server
    r = sa("--socket", str(path), "rekey", "deadbeef")
    assert r.returncode == 7 and "no SA with SPI deadbeef" in r.stderr and "Traceback" not in r.stderr
    assert sa("--socket", str(path), "rekey", "vpn").stdout.strip() == "rekeying child c0ffee01"


def test_bad_request_lines_get_an_answer_not_a_hangup(server) -> None:  # type: ignore[no-untyped-def]
    import socket

    path, _seen = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"not json\n[1,2]\n")
        f = s.makefile("rb")
        for _ in range(2):
            ans = json.loads(f.readline())
            assert ans["ok"] is False and "bad request" in ans["error"]
    with pytest.raises(ControlError, match="unknown command"):
        request(path, "frobnicate")
