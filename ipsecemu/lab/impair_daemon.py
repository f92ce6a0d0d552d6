"""The impairment daemon of one lab link: ``python -m ipsecemu.lab.impair_daemon --config F --control S``.

Runs in the root netns, opens one AF_PACKET socket on each end of the helper netns (``side_a``
faces endpoints[0], ``side_b`` endpoints[1]) and runs the C element
(:class:`ipsecemu.dataplane.native.impair.ImpairElement`) on a thread; no Python per frame.  Its
control socket (a unix stream socket, one JSON request and one JSON answer per line) serves
``{"op": "get"}`` (settings and counters of both directions), ``{"op": "set", "a_to_b": {...},
"b_to_a": {...}}`` (:class:`ipsecemu.lab.impair_schema.ImpairDir` fields; a direction left out
is unchanged) and ``{"op": "clear"}``.  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.dataplane.native.impair import ImpairElement
from ipsecemu.lab.impair_schema import DIRECTIONS, ImpairDir, format_dir
from ipsecemu.net.netns import entered

log = logging.getLogger("ipsecemu.lab.impair_daemon")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: we never read back the frames we send
SOCK_BUF = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # not in Python's socket module


def open_side(ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket bound to ``ifname`` in ``ns`` (protocol 0 until bound: no frame of the
    other side slips in before the bind)."""
    with entered(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
                s.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            s.bind((ifname, ETH_P_ALL))
        except OSError as exc:
            s.close()
            raise ConfigError(f"{ns}:{ifname}: cannot open an AF_PACKET socket: {exc.strerror}") from None
    return s


class ImpairDaemon:
    def __init__(self, cfg: dict[str, Any], control: Path) -> None:
        self.cfg = cfg
        self.link = str(cfg["link"])
        self.control = control
        self.socks = [open_side(cfg["netns"], side) for side in cfg["sides"]]
        self.element = ImpairElement(self.socks[0].fileno(), self.socks[1].fileno(),
                                     max_frame=int(cfg.get("max_frame", 1522)), pool=int(cfg.get("pool", 4096)),
                                     seed=int(cfg.get("seed", 0)))
        self.stopping = threading.Event()
        for i, d in enumerate(DIRECTIONS):
            self.apply(i, ImpairDir.from_json(cfg.get(d) or {}))

    def apply(self, i: int, d: ImpairDir) -> None:
        self.element.set(i, **d.to_json())
        log.info("impair %s %s: %s", self.link, DIRECTIONS[i], format_dir(d))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "link": self.link, "pid": os.getpid()}
        for i, d in enumerate(DIRECTIONS):
            cfg = ImpairDir.from_json(self.element.get(i))
            out[d] = {"config": cfg.to_json(), "text": format_dir(cfg), "stats": self.element.stats(i)}
        return out

    def handle(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict) or req.get("op") not in ("get", "set", "clear"):
            return {"ok": False, "error": "request must be {\"op\": \"get\"|\"set\"|\"clear\", ...}"}
        try:
            if req["op"] == "clear":
                for i in range(2):
                    self.apply(i, ImpairDir())
            elif req["op"] == "set":
                for i, d in enumerate(DIRECTIONS):
                    if isinstance(req.get(d), dict):
                        self.apply(i, ImpairDir.from_json(req[d]))
        except (ConfigError, TypeError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        return self.describe()

    def serve(self) -> None:
        self.control.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.control))
        os.chmod(self.control, 0o600)
        srv.listen(8)
        srv.settimeout(0.2)
        self.element.start()
        log.info("impair %s: element running (control %s)", self.link, self.control)
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    if self.element.result is not None:
                        raise ConfigError(f"impair {self.link}: element stopped ({self.element.result})") from None
                    continue
                with conn:
                    conn.settimeout(2.0)
                    try:
                        line = conn.makefile("rb").readline(65536)
                        try:
                            req = json.loads(line)
                        except ValueError:
                            req = None
                        conn.sendall(json.dumps(self.handle(req)).encode() + b"\n")
                    except OSError as exc:
                        log.warning("impair %s: control connection: %s", self.link, exc)
        finally:
            srv.close()
            self.control.unlink(missing_ok=True)
            self.element.stop()
            for s in self.socks:
                s.close()
            log.info("impair %s: stopped", self.link)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipsecemu.lab.impair_daemon", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--control", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        d = ImpairDaemon(json.loads(args.config.read_text()), args.control)
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        print(f"impair daemon: {args.config}: {exc}", file=sys.stderr)
        return 1

    def stop(*_: Any) -> None:
        d.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        d.serve()
    except ConfigError as exc:
        print(f"impair daemon: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
