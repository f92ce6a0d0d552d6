"""charon's vici control socket: one short session per command, answers decoded to str.

:class:`ViciClient` is the command half of :class:`~ipsecemu.strongswan.charon.Charon`; it needs
``vici_path`` (the socket), ``ns``, ``dir`` and ``log_file`` (quoted in error messages) from the daemon half.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, cast

import vici
import vici.exception

from ipsecemu.base.errors import ServiceError
from ipsecemu.net.proc import wait_for

from .conn import Conn

__all__ = ["CharonError", "ViciClient"]


class CharonError(ServiceError):
    """charon could not be started, or a vici command failed (message says which)."""


def _decode(obj: Any) -> Any:
    """vici answers in bytes; tests want str."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, dict):
        return {(_decode(k)): _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


class ViciClient:
    """vici commands against the charon whose socket is ``vici_path``."""

    ns: str
    dir: Path  # the instance directory (charon.stderr)
    log_file: Path
    vici_path: Path

    def log_tail(self, n: int = 30) -> str:
        parts = []
        for f in (self.log_file, self.dir / "charon.stderr"):
            if f.exists():
                parts += f.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(parts)

    def _vici_answers(self) -> bool:
        if not self.vici_path.exists():
            return False
        try:
            s = self.session(timeout=1.0)
            s.version()
            s.transport.socket.close()
            return True
        except (OSError, Exception):  # noqa: BLE001 - any failure means "not yet"
            return False

    def session(self, timeout: float = 30.0) -> vici.Session:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.vici_path))
        return vici.Session(sock)

    def _call(self, what: str, fn_name: str, *args: Any) -> Any:
        s = self.session()
        try:
            res = getattr(s, fn_name)(*args)
            if hasattr(res, "__next__"):  # streamed commands: drain the log events
                res = list(res)
            return res
        except vici.exception.CommandException as exc:
            raise CharonError(f"{what}: {exc}") from exc
        finally:
            s.transport.socket.close()

    def version(self) -> dict[str, str]:
        return cast(dict[str, str], _decode(self._call("version", "version")))

    def load(self, conn: Conn) -> None:
        """load-shared (the PSK), then load-conn: a connection with start_action=start initiates as
        it loads, and with the responder already listening its IKE_AUTH can come before a PSK loaded
        after it ("no shared key found")."""
        if conn.psk:
            ids = [i for i in (conn.local_id, conn.remote_id) if i != "%any"] or ["%any"]
            self._call("load-shared", "load_shared",
                       {"id": f"psk-{conn.name}", "type": "IKE", "data": conn.psk, "owners": ids})
        self._call(f"load-conn {conn.name}", "load_conn", conn.vici())
        # the same connection as swanctl.conf text, for humans reading the instance dir
        with open(self.dir / "swanctl.conf", "a") as f:
            f.write(conn.swanctl_conf())

    def initiate(self, child: str | None = None, ike: str | None = None, timeout_ms: int = 8000) -> None:
        msg: dict[str, Any] = {"timeout": str(timeout_ms), "init-limits": "no"}
        if child:
            msg["child"] = child
        if ike:
            msg["ike"] = ike
        self._call(f"initiate {child or ike}", "initiate", msg)

    def terminate(self, *, ike: str | None = None, child: str | None = None, ike_id: int | None = None,
                  child_id: int | None = None, timeout_ms: int = 5000, force: bool = False) -> None:
        msg: dict[str, Any] = {"timeout": str(timeout_ms)}
        for k, v in (("ike", ike), ("child", child), ("ike-id", ike_id), ("child-id", child_id)):
            if v is not None:
                msg[k] = str(v)
        if force:
            msg["force"] = "yes"
        self._call("terminate", "terminate", msg)

    def rekey(self, *, ike: str | None = None, child: str | None = None, reauth: bool = False) -> None:
        msg: dict[str, Any] = {}
        if ike:
            msg["ike"] = ike
        if child:
            msg["child"] = child
        if reauth:
            msg["reauth"] = "yes"
        self._call("rekey", "rekey", msg)

    def list_sas(self) -> dict[str, dict[str, Any]]:
        """``{ike_name: sa_dict}`` with str values (one entry per IKE SA name; the newest wins)."""
        out: dict[str, dict[str, Any]] = {}
        for item in self._call("list-sas", "list_sas"):
            out.update(_decode(item))
        return out

    def list_conns(self) -> dict[str, dict[str, Any]]:
        """Loaded connections as charon reports them (``list-conns``), str values."""
        out: dict[str, dict[str, Any]] = {}
        for item in self._call("list-conns", "list_conns"):
            out.update(_decode(item))
        return out

    def list_sas_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every IKE SA, including several with the same connection name."""
        return [(k, v) for item in self._call("list-sas", "list_sas") for k, v in _decode(item).items()]

    def child_sas(self) -> list[dict[str, Any]]:
        """Every CHILD_SA of every IKE SA (each dict also carries ``ike`` = the IKE SA dict)."""
        out = []
        for _name, ike in self.list_sas_all():
            for child in ike.get("child-sas", {}).values():
                out.append({**child, "ike": ike})
        return out

    def wait_established(self, timeout: float = 10.0, ike: str | None = None) -> dict[str, Any]:
        """Poll list-sas until an IKE SA is ESTABLISHED with an INSTALLED child."""
        found: dict[str, Any] = {}

        def ready() -> bool:
            for name, sa in self.list_sas_all():
                if ike and name != ike:
                    continue
                if sa.get("state") == "ESTABLISHED" and any(
                        c.get("state") == "INSTALLED" for c in sa.get("child-sas", {}).values()):
                    found.update(sa)
                    return True
            return False

        if not wait_for(ready, timeout, 0.05):
            raise CharonError(f"no ESTABLISHED/INSTALLED SA in {self.ns} after {timeout}s:\n{self.log_tail()}")
        return found
