"""``ipsecemu gateway run``: IKE on asyncio, Child SAs in the C data path, a control socket.

Layout: this module (startup, IKE events -> data path, restarts, shutdown, pidfile, ``run``);
driver.py (per-address state, the events-first driver), sockets.py (ESP sockets, the IKE
socketpair), timers.py (the tick: soft limits, keepalives), ops.py (control operations).

One :class:`IkeEndpoint` + :class:`IkeTransport` per local address.  IKE events drive the
per-connection :class:`ConnectionDatapath` (install / make-before-break rekey / remove).  While
a C loop reads a NAT-T socket, IKE datagrams arriving there come back through a unix datagram
socketpair and are fed to the transport as if read directly.  A 0.1 s tick turns data-plane
soft byte/packet limits into Child SA rekeys (Azure's SADataSizeInKilobytes).

NAT keepalives (RFC 3948 section 2.3): for every established IKE SA using UDP encapsulation (a
NAT on either side, or forced encapsulation -- strongSwan sends them whenever NAT-T is in use
by default), the tick sends a 1-byte 0xFF datagram from the NAT-T socket to the peer once
``nat_t: {keepalive: N}`` seconds (default 20, 0 disables) passed without any other packet
(IKE, or ESP counted by the data path) sent to that peer.  Counter ``keepalive_out`` in the
transport's counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ServiceError
from ipsecemu.config import sku as skus
from ipsecemu.config.connection_ike import to_ike_sa_config
from ipsecemu.config.gateway import GatewayConfig, GatewayConnection
from ipsecemu.gateway.control import ControlServer
from ipsecemu.gateway.datapath import ConnectionDatapath, Port
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState
from ipsecemu.io.transport import IkeTransport
from ipsecemu.net.netns import netlink
from ipsecemu.net.tun import attachable

from .driver import EventsFirst, LocalAddress
from .explain import FailureLog
from .ops import ControlOps
from .sockets import Sockets
from .timers import TICK, Backoff, Timers
from .trap import Traps, TrapState

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["TICK", "Gateway", "GatewayError", "run"]

SHUTDOWN_GRACE = 2.0  # seconds to wait for DELETE answers on SIGTERM


class GatewayError(ServiceError):
    """A user-facing startup error (not root, address missing, port in use, ...)."""


def sku_admitted(cfg: GatewayConfig) -> GatewayConfig:
    """``cfg`` with at most its SKU's tunnel count of connections (in file order); each refused one
    is logged (emulated Azure limit, ipsecemu.config.sku)."""
    if cfg.sku is None:
        return cfg
    limit = skus.sku(cfg.sku).tunnels
    for c in cfg.connections[limit:]:
        log.error("%s: connection %s (peer %s) refused: SKU %s allows %d tunnels (emulated Azure limit)",
                  cfg.node, c.name, c.conn.remote_address, cfg.sku, limit)
    return dataclasses.replace(cfg, connections=cfg.connections[:limit])


class Gateway(Sockets, Timers, Traps, ControlOps):
    """One ``gateway run``: startup, IKE events into the data path, restarts and shutdown; sockets,
    timers, on-demand (trap) connections and control operations come from the mixins."""


    def __init__(self, cfg: GatewayConfig, *, backend: str = "auto") -> None:
        self.cfg = cfg = sku_admitted(cfg)
        self.backend = backend
        self.locals: dict[str, LocalAddress] = {}
        self.dps: dict[str, ConnectionDatapath] = {
            c.name: ConnectionDatapath(c, batch=cfg.batch, backend=backend) for c in cfg.connections}
        self.ike_info: dict[tuple[bytes, bytes], dict[str, Any]] = {}  # established IKE SAs
        self.child_created: dict[int, float] = {}
        self.ike_conn: dict[bytes, str] = {}  # IKE SPIi -> connection name
        self.ports: dict[str, Port] = {}  # connection -> its own ESP socket
        self.stopping = False
        self.held: set[str] = set()  # terminated by the operator: no automatic restart
        self._stop = asyncio.Event()
        self._uid = 0
        self._uids: dict[bytes, int] = {}
        self.control: ControlServer | None = None
        self.explain = FailureLog(log)  # failures in words: connection, peer, role, reason
        self.backoff = Backoff()  # re-initiation of failing connections: 1 s .. 60 s
        self._tasks: list[asyncio.Task[Any]] = []
        # keepalives: IKE SA (SPIi, SPIr) -> (last time anything went to its peer, ESP packets out then)
        self._ka: dict[tuple[bytes, bytes], tuple[float, int]] = {}
        self.traps: dict[str, TrapState] = {}  # start_action trap connections (trap.py)

    # -- startup -------------------------------------------------------------------------
    async def start(self) -> None:
        names = [c.tunnel.name for c in self.cfg.connections]
        taken = netlink(None, lambda ipr: [n for n in names if not attachable(ipr, n)])
        if taken:
            raise GatewayError(f"tunnel device {', '.join(taken)} already exists here and is not a free persistent "
                               "tun (another gateway, or a leftover link: ip link del NAME)")
        by_addr: dict[str, list[GatewayConnection]] = {}
        for c in self.cfg.connections:
            by_addr.setdefault(str(c.conn.local_address), []).append(c)
        for addr, conns in by_addr.items():
            ports = {(c.conn.nat_t.ike_port, c.conn.nat_t.natt_port) for c in conns}
            if len(ports) > 1:
                raise GatewayError(f"{addr}: connections on one address must share nat_t ports, got {sorted(ports)}")
            ike_port, nat_port = ports.pop()
            endpoint = IkeEndpoint([to_ike_sa_config(c.conn) for c in conns], (addr, ike_port))
            transport = IkeTransport(EventsFirst(endpoint, self._on_event), [addr], ike_port=ike_port,
                                     nat_port=nat_port, on_esp=self._on_esp)
            try:
                await transport.start()
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise GatewayError(f"local address {addr} is not configured on any interface here "
                                       "(wrong netns, or add it first)") from None
                if exc.errno == errno.EADDRINUSE:
                    raise GatewayError(f"UDP port {ike_port} or {nat_port} on {addr} is in use "
                                       "(another gateway or charon running?)") from None
                raise GatewayError(f"cannot bind IKE sockets on {addr}: {exc.strerror}") from None
            local = LocalAddress(addr, endpoint, transport)
            self.locals[addr] = local
            self._setup_udp(local, nat_port)
            log.info("IKE listening on %s[%d,%d] for %s", addr, ike_port, nat_port,
                     ", ".join(c.name for c in conns))
        self._tasks.append(asyncio.create_task(self._tick()))
        self._arm_traps()  # on demand: tun and routes now, IKE with the first packet
        for c in self.cfg.connections:
            if c.conn.start_action == "initiate":
                self.initiate(c.name)

    # -- IKE events ------------------------------------------------------------------------
    def _sa_for(self, spi_i: bytes, spi_r: bytes) -> tuple[LocalAddress, IkeSa] | None:
        for local in self.locals.values():
            for sa in local.endpoint.sas.values():
                if sa.spi_i == spi_i and sa.spi_r == spi_r:
                    return local, sa
        return None

    def _on_event(self, ev: Event, from_response: bool = False) -> None:
        found = self._sa_for(ev.ike_spi_i, ev.ike_spi_r)
        conn = found[1].config.name if found else None
        if conn is not None:
            self.ike_conn[ev.ike_spi_i] = conn
        if isinstance(ev, IkeSaRekeyed) and conn is not None:
            self.ike_conn[ev.new_spi_i] = conn
        self.explain(ev)
        self._trap_event(ev)
        if isinstance(ev, IkeSaRekeyed):
            # the new IKE SA is listed with its own proposal and age (the old one's entry goes with it)
            old = self.ike_info.get((ev.ike_spi_i, ev.ike_spi_r), {})
            self.ike_info[(ev.new_spi_i, ev.new_spi_r)] = {**old, "established": time.time(), "proposal": ev.proposal}
        if isinstance(ev, IkeSaEstablished):
            self.ike_info[(ev.ike_spi_i, ev.ike_spi_r)] = {"established": time.time(), "proposal": ev.proposal,
                                                          "local_id": ev.local_id, "remote_id": ev.remote_id}
            log.info("%s: IKE SA established with %s (%s, %s)", conn, ev.remote[0], ev.remote_id, ev.proposal)
            if ev.conn not in self.traps:  # on demand: only a Child SA ends the back-off (trap.py)
                self.backoff.succeeded(ev.conn)
        elif isinstance(ev, ChildSaEstablished | ChildSaRekeyed):
            if conn is None or conn not in self.dps or found is None:
                log.warning("Child SA for an unknown IKE SA; ignored")
                return
            local = found[0]
            keys = ev.keys
            self.child_created[keys.inbound.spi] = time.time()
            if isinstance(ev, ChildSaRekeyed):
                log.info("%s: Child SA rekeyed %08x -> %08x", conn, ev.old_inbound_spi, keys.inbound.spi)
            self.dps[conn].install(keys, self.now(), self._port_for(local, conn, keys),
                                   rekey=isinstance(ev, ChildSaRekeyed), we_started=from_response,
                                   old_inbound_spi=ev.old_inbound_spi if isinstance(ev, ChildSaRekeyed) else None)
        elif isinstance(ev, ChildSaDeleted):
            for dp in self.dps.values():
                if dp.remove(ev.inbound_spi):
                    log.info("%s: Child SA %08x deleted (%s)", dp.gw.name, ev.inbound_spi, ev.reason)
            if conn is not None and found is not None:
                self._keep_child(conn, found[1], ev.reason)
        elif isinstance(ev, IkeSaDeleted):
            self.ike_info.pop((ev.ike_spi_i, ev.ike_spi_r), None)
            if ev.reason == "rekeyed":
                return
            # the endpoint drops a closed SA before its event is delivered: use what we noted
            name = self.ike_conn.pop(ev.ike_spi_i, None) or conn
            self._reconcile()
            if name and not self.stopping:
                self._maybe_restart(name, ev.reason, ev.detail)

    def _live_children(self) -> set[int]:
        live: set[int] = set()
        for local in self.locals.values():
            for sa in local.endpoint.sas.values():
                if sa.state not in (IkeState.CLOSED,):
                    live.update(sa.children)
        return live

    def _reconcile(self) -> None:
        """Remove data-path SAs whose IKE SA is gone (the core may close quietly)."""
        live = self._live_children()
        for dp in self.dps.values():
            for spi in list(dp.children):
                if spi not in live:
                    dp.remove(spi)

    def _maybe_restart(self, name: str, reason: str, detail: str = "") -> None:
        gw = self.cfg.connection(name)
        if gw is None or gw.conn.start_action != "initiate" or name in self.held:
            return
        if reason == "local":
            return
        if reason == "remote" and gw.close_action != "restart":
            return
        if any(sa.config.name == name and sa.state != IkeState.CLOSED
               for local in self.locals.values() for sa in local.endpoint.sas.values()):
            return
        delay = self.backoff.failed(name, self.now(), f"{reason}: {detail}" if detail else reason)
        log.info("%s: re-initiating in %.1fs (attempt %d, %s)", name, delay, self.backoff.retries[name].attempts,
                 reason)
        self.loop.call_later(delay, self._restart, name)

    def _keep_child(self, name: str, sa: IkeSa, reason: str) -> None:
        """An always-up connection whose last Child SA went while its IKE SA stays: a Child SA that
        expired before a rekey replaced it (e.g. the rekey stuck behind retransmissions on a lossy
        link), or one the peer deleted under ``close_action: restart``, is created again
        (CREATE_CHILD_SA) instead of leaving the tunnel without a data path."""
        gw = self.cfg.connection(name)
        if gw is None or gw.conn.start_action != "initiate" or name in self.held or self.stopping:
            return
        if reason not in ("expired", "remote") or (reason == "remote" and gw.close_action != "restart"):
            return
        if any(not ch.rekeyed for ch in sa.children.values()):
            return
        log.info("%s: no Child SA left with %s (%s): creating a new one", name, sa.remote[0], reason)
        self.loop.call_soon(self._recreate_child, name, sa)

    def _recreate_child(self, name: str, sa: IkeSa) -> None:
        if self.stopping or name in self.held or sa.state != IkeState.ESTABLISHED:
            return  # an IKE SA that went meanwhile is restarted by _maybe_restart
        if any(not ch.rekeyed for ch in sa.children.values()):
            return
        gw = self.cfg.connection(name)
        assert gw is not None
        try:
            sa.create_child(self.now(), list(gw.conn.local_ts), list(gw.conn.remote_ts))
        except LocalProtocolError as exc:
            log.info("%s: Child SA not re-created: %s", name, exc)
            return
        for local in self.locals.values():
            local.transport.pump()

    def _restart(self, name: str) -> None:
        self.backoff.started(name)
        if self.stopping or name in self.held:
            return
        if not any(sa.config.name == name and sa.state != IkeState.CLOSED
                   for local in self.locals.values() for sa in local.endpoint.sas.values()):
            self.initiate(name)

    # -- shutdown ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self.stopping = True
        now = self.now()
        for lo, sa in self._all_sas():
            if sa.state == IkeState.ESTABLISHED:
                try:
                    sa.delete(now)
                except LocalProtocolError:
                    pass
                lo.transport.pump()
        deadline = self.now() + SHUTDOWN_GRACE
        while self.now() < deadline and any(sa.state == IkeState.DELETING for _lo, sa in self._all_sas()):
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        for dp in self.dps.values():
            try:
                dp.close()
            except Exception:
                log.exception("%s: data path cleanup failed", dp.gw.name)
        for lo in self.locals.values():
            lo.transport.close()
            if lo.ike_pair:
                try:
                    self.loop.remove_reader(lo.ike_pair[1].fileno())
                except (RuntimeError, ValueError):
                    pass
                for s in lo.ike_pair:
                    s.close()
        for port in self.ports.values():
            port.close()
        self.ports.clear()
        if self.control is not None:
            await self.control.close()
        log.info("gateway %s stopped", self.cfg.node)


def _setup_logging(state_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(state_dir / "gateway.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("ipsecemu")
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        # the file gets INFO; stderr keeps what -v asked for
        for h in logging.getLogger().handlers:
            if h.level == logging.NOTSET:
                h.setLevel(logging.getLogger().getEffectiveLevel())
        root.setLevel(logging.INFO)
    return handler


def _check_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    if pid != os.getpid():
        raise GatewayError(f"a gateway is already running with state dir {pidfile.parent} (pid {pid})")


async def _main(cfg: GatewayConfig, backend: str) -> int:
    gw = Gateway(cfg, backend=backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gw.request_stop)
    pidfile = cfg.state_dir / "gateway.pid"
    try:
        await gw.start()
        gw.control = ControlServer(cfg.state_dir / "control.sock", gw.handle)
        await gw.control.start()
        pidfile.write_text(f"{os.getpid()}\n")
        log.info("gateway %s running (pid %d, control %s)", cfg.node, os.getpid(), gw.control.path)
        await gw.wait()
        log.info("gateway %s: signal received, shutting down", cfg.node)
    finally:
        await gw.shutdown()
        try:
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        except OSError:
            pass
    return 0


def run(cfg: GatewayConfig, *, backend: str = "auto") -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.  Raises GatewayError for startup problems."""
    if os.geteuid() != 0:
        raise GatewayError("gateway run needs root (tun devices, routes, UDP 500/4500); try sudo")
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise GatewayError(f"state dir {cfg.state_dir}: {exc.strerror}") from None
    _check_pidfile(cfg.state_dir / "gateway.pid")
    handler = _setup_logging(cfg.state_dir)
    try:
        return asyncio.run(_main(cfg, backend))
    finally:
        logging.getLogger("ipsecemu").removeHandler(handler)
        handler.close()
