"""The gateway control socket: a unix stream socket (mode 0600) speaking JSON lines.

Request: one line ``{"cmd": "list_sas" | "counters" | "rekey" | "terminate" | "initiate" |
"export_keys", ...arguments}``.  Answer: one line ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``.  Several requests may follow on one connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ServiceError
from ipsecemu.config.rundir import run_dir

log = logging.getLogger(__name__)

__all__ = ["ControlError", "ControlServer", "request", "socket_path"]

MAX_LINE = 1 << 16
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(ServiceError):
    """The gateway could not be reached or refused a request (message says why)."""


def socket_path(lab: str, node: str) -> Path:
    """A lab gateway's socket: under its default state dir (config.gateway), so IPSECEMU_RUN_DIR moves both."""
    return run_dir() / lab / node / "control.sock"


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # stale: the pid file check already ruled out a live gateway
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("need a JSON object with a 'cmd' string")
                except ValueError as exc:
                    await self._reply(writer, {"ok": False, "error": f"bad request: {exc}"})
                    continue
                try:
                    result = await self.handler(req)
                    answer = {"ok": True, "result": result}
                except ControlError as exc:
                    answer = {"ok": False, "error": str(exc)}
                except Exception as exc:  # keep serving; the log has the details
                    log.exception("control command %s failed", req.get("cmd"))
                    answer = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
                await self._reply(writer, answer)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, default=str).encode() + b"\n")
        await writer.drain()


def request(path: str | os.PathLike[str], cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to a gateway; returns its result or raises :class:`ControlError`."""
    p = str(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(p)
        except FileNotFoundError:
            raise ControlError(f"no gateway control socket at {p} (is 'ipsecemu gateway run' running?)") from None
        except PermissionError:
            raise ControlError(f"{p}: permission denied (the control socket is root-only)") from None
        except ConnectionRefusedError:
            raise ControlError(f"{p}: connection refused (stale socket; the gateway is not running)") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ControlError(f"{p}: the gateway closed the connection")
            buf += chunk
    except TimeoutError:
        raise ControlError(f"{p}: no answer within {timeout:.0f}s") from None
    finally:
        s.close()
    ans = json.loads(buf)
    if not ans.get("ok"):
        raise ControlError(str(ans.get("error", "unknown error")))
    return ans.get("result")
