"""``ipsecemu gateway run``: IKE on asyncio, Child SAs in the C data path, a control socket.

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
import socket
import time
from pathlib import Path
from typing import Any

from ipsecemu.config import connection as ikecfg
from ipsecemu.config.gateway import GatewayConfig, GatewayConnection
from ipsecemu.gateway.control import ControlError, ControlServer
from ipsecemu.gateway.datapath import ConnectionDatapath, Port
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.errors import LocalProtocolError
from ipsecemu.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaKeys,
    ChildSaRekeyed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from ipsecemu.ike.sa import IkeSa
from ipsecemu.ike.states import IkeState
from ipsecemu.io.transport import NON_ESP_MARKER, IkeTransport

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["Gateway", "GatewayError", "run"]

TICK = 0.1
SHUTDOWN_GRACE = 2.0  # seconds to wait for DELETE answers on SIGTERM
RESTART_DELAY = 1.0


class GatewayError(RuntimeError):
    """A user-facing startup error (not root, address missing, port in use, ...)."""


class _Local:
    """Everything bound to one local IKE address."""

    def __init__(self, addr: str, endpoint: IkeEndpoint, transport: IkeTransport) -> None:
        self.addr = addr
        self.endpoint = endpoint
        self.transport = transport
        self.nat_port = 4500
        self.ike_pair: tuple[socket.socket, socket.socket] | None = None


class _EventsFirst:
    """The endpoint as the transport's driver, with one change: the core's events are handled
    *before* the datagrams they came with are sent.  So a Child SA is in the data path before
    our CREATE_CHILD_SA/IKE_AUTH response or our DELETE of its predecessor leaves (as a kernel
    IPsec stack does it), and the peer can never send on an SA we have not installed.  It also
    notes whether the input being handled was a response: events then come from exchanges we
    started (we are the initiator of that rekey)."""

    def __init__(self, endpoint: IkeEndpoint, on_event: Any) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.from_response = False
        self.last_sent: dict[str, float] = {}  # peer host -> when IKE last went there (keepalives)

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float,
                         local: tuple[str, int] | None = None) -> None:
        self.from_response = len(data) >= 28 and bool(data[19] & 0x20)  # IKE header R flag
        self.endpoint.receive_datagram(data, addr, now, local)
        self._drain()

    def handle_timer(self, now: float) -> None:
        self.from_response = False
        self.endpoint.handle_timer(now)
        self._drain()

    def _drain(self) -> None:
        while (ev := self.endpoint.next_event()) is not None:
            try:
                self.on_event(ev, self.from_response)
            except Exception:  # one bad event must not stop IKE
                log.exception("handling %s failed", type(ev).__name__)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
        self._drain()  # API calls (rekey, delete, initiate) may have queued events too
        out = self.endpoint.datagrams_to_send(now)
        for _data, remote, _local in out:
            self.last_sent[remote[0]] = now
        return out

    def get_timer(self) -> float | None:
        return self.endpoint.get_timer()

    def next_event(self) -> None:
        return None  # already handled in _drain


class Gateway:
    def __init__(self, cfg: GatewayConfig, *, backend: str = "auto") -> None:
        self.cfg = cfg
        self.backend = backend
        self.locals: dict[str, _Local] = {}
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
        self._tasks: list[asyncio.Task[Any]] = []
        # keepalives: IKE SA (SPIi, SPIr) -> (last time anything went to its peer, ESP packets out then)
        self._ka: dict[tuple[bytes, bytes], tuple[float, int]] = {}

    # -- startup -------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time()

    async def start(self) -> None:
        from ipsecemu.lab.netns import netlink

        names = [c.tunnel.name for c in self.cfg.connections]
        taken = netlink(None, lambda ipr: [n for n in names if ipr.link_lookup(ifname=n)])
        if taken:
            raise GatewayError(f"tunnel device {', '.join(taken)} already exists here (another gateway, or a "
                               "leftover link: ip link del NAME)")
        by_addr: dict[str, list[GatewayConnection]] = {}
        for c in self.cfg.connections:
            by_addr.setdefault(str(c.conn.local_address), []).append(c)
        for addr, conns in by_addr.items():
            ports = {(c.conn.nat_t.ike_port, c.conn.nat_t.natt_port) for c in conns}
            if len(ports) > 1:
                raise GatewayError(f"{addr}: connections on one address must share nat_t ports, got {sorted(ports)}")
            ike_port, nat_port = ports.pop()
            endpoint = IkeEndpoint([ikecfg.to_ike_sa_config(c.conn) for c in conns], (addr, ike_port))
            transport = IkeTransport(_EventsFirst(endpoint, self._on_event), [addr], ike_port=ike_port,
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
            local = _Local(addr, endpoint, transport)
            self.locals[addr] = local
            self._setup_udp(local, nat_port)
            log.info("IKE listening on %s[%d,%d] for %s", addr, ike_port, nat_port,
                     ", ".join(c.name for c in conns))
        self._tasks.append(asyncio.create_task(self._tick()))
        for c in self.cfg.connections:
            if c.conn.start_action == "initiate":
                self.initiate(c.name)

    def _setup_udp(self, local: _Local, nat_port: int) -> None:
        """The socketpair over which C loops hand IKE datagrams (NAT-T port) back to us."""
        local.nat_port = nat_port
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        local.ike_pair = (a, b)
        self.loop.add_reader(b.fileno(), self._on_ike_record, local, b, nat_port)

    def _port_for(self, local: _Local, name: str, keys: ChildSaKeys) -> Port | None:
        """A socket of this connection's own for its ESP, *connected* to the peer: UDP bound to
        the NAT-T port beside the transport's (SO_REUSEADDR; the kernel prefers the connected
        socket for the peer's datagrams, IKE included, which the C loop hands back), or raw IP
        protocol 50 (a connected raw socket only sees the peer's packets).  So every connection
        gets its own C loop, e.g. two tunnels to an active-active pair from one address."""
        key = (keys.encap, keys.remote if keys.encap else (keys.remote[0], 0))
        old = self.ports.get(name)
        if old is not None and old.key == key:
            return old
        v6 = ":" in local.addr
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            if keys.encap:
                s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if v6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((local.addr, local.nat_port))
            else:
                s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ESP)
                s.bind((local.addr, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.connect(key[1])
            s.setblocking(False)
        except OSError as exc:
            log.error("%s: ESP socket to %s: %s", name, key[1][0], exc)
            return None
        fd = s.fileno()
        reading = [False]

        def send(esp: bytes, _remote: tuple[str, int]) -> None:
            try:
                s.send(esp)
            except OSError as exc:
                log.debug("%s: ESP send: %s", name, exc)

        def pause() -> None:
            if reading[0]:
                self.loop.remove_reader(fd)
                reading[0] = False

        def resume() -> None:
            if not reading[0]:
                self.loop.add_reader(fd, self._on_port, local, s, keys.encap, v6)
                reading[0] = True

        def close() -> None:
            pause()
            s.close()

        port = Port(fd, pause, resume, send, raw=not keys.encap,
                    ike_fd=local.ike_pair[0].fileno() if keys.encap and local.ike_pair else -1,
                    key=key, close=close)
        resume()  # asyncio reads it until a C loop takes it over
        self.ports[name] = port
        if old is not None:  # the data path lets go of the old one when it installs the new
            self.loop.call_soon(self._close_port, old)
        return port

    def _close_port(self, port: Port) -> None:
        if port.owner is None and port not in self.ports.values():
            port.close()

    # -- input glue ----------------------------------------------------------------------
    def _on_ike_record(self, local: _Local, sock: socket.socket, nat_port: int) -> None:
        from ipsecemu.dataplane.native import parse_ike_record

        for _ in range(64):
            try:
                rec = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            try:
                remote, msg = parse_ike_record(rec)
            except ValueError:
                continue
            local.transport._on_datagram(NON_ESP_MARKER + msg, remote, (local.addr, nat_port))

    def _dp_for_spi(self, esp: bytes) -> ConnectionDatapath | None:
        if len(esp) < 8:
            return None
        spi = int.from_bytes(esp[:4], "big")
        return next((dp for dp in self.dps.values() if dp.has_spi(spi)), None)

    def _on_esp(self, esp: bytes, remote: tuple[str, int], local: tuple[str, int]) -> None:
        dp = self._dp_for_spi(esp)
        if dp is not None:
            dp.slow_input(esp)

    def _on_port(self, local: _Local, sock: socket.socket, udp: bool, v6: bool) -> None:
        """Slow path / before a C loop starts: what arrives on a connection's own socket."""
        for _ in range(64):
            try:
                pkt, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on a connected socket
                return
            if udp:
                # IKE (non-ESP marker) and keepalives go the transport's usual way
                local.transport._on_datagram(pkt, (addr[0], addr[1]), (local.addr, local.nat_port))
                continue
            if not v6:  # IPv4 raw sockets deliver the IP header too
                if len(pkt) < 20:
                    continue
                pkt = pkt[(pkt[0] & 0x0F) * 4:]
            dp = self._dp_for_spi(pkt)
            if dp is not None:
                dp.slow_input(pkt)

    # -- IKE events ------------------------------------------------------------------------
    def _sa_for(self, spi_i: bytes, spi_r: bytes) -> tuple[_Local, IkeSa] | None:
        for local in self.locals.values():
            for sa in local.endpoint.sas.values():
                if sa.spi_i == spi_i and sa.spi_r == spi_r:
                    return local, sa
        return None

    def _uniqueid(self, spi_i: bytes) -> int:
        if spi_i not in self._uids:
            self._uid += 1
            self._uids[spi_i] = self._uid
        return self._uids[spi_i]

    def _on_event(self, ev: object, from_response: bool = False) -> None:
        found = self._sa_for(ev.ike_spi_i, ev.ike_spi_r) if hasattr(ev, "ike_spi_i") else None
        conn = found[1].config.name if found else None
        if conn is not None:
            self.ike_conn[ev.ike_spi_i] = conn  # type: ignore[attr-defined]
        if isinstance(ev, IkeSaRekeyed) and conn is not None:
            self.ike_conn[ev.new_spi_i] = conn
        if isinstance(ev, IkeSaEstablished):
            self.ike_info[(ev.ike_spi_i, ev.ike_spi_r)] = {"established": time.time(), "proposal": ev.proposal,
                                                          "local_id": ev.local_id, "remote_id": ev.remote_id}
            log.info("%s: IKE SA established with %s (%s, %s)", conn, ev.remote[0], ev.remote_id, ev.proposal)
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
                                   rekey=isinstance(ev, ChildSaRekeyed), we_started=from_response)
        elif isinstance(ev, ChildSaDeleted):
            for dp in self.dps.values():
                if dp.remove(ev.inbound_spi):
                    log.info("%s: Child SA %08x deleted (%s)", dp.gw.name, ev.inbound_spi, ev.reason)
        elif isinstance(ev, IkeSaDeleted):
            self.ike_info.pop((ev.ike_spi_i, ev.ike_spi_r), None)
            if ev.reason == "rekeyed":
                return
            # the endpoint drops a closed SA before its event is delivered: use what we noted
            name = self.ike_conn.pop(ev.ike_spi_i, None) or conn
            log.info("%s: IKE SA deleted (%s)", name or "?", ev.reason)
            self._reconcile()
            if name and not self.stopping:
                self._maybe_restart(name, ev.reason)

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

    def _maybe_restart(self, name: str, reason: str) -> None:
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
        log.info("%s: re-initiating in %.0fs (%s)", name, RESTART_DELAY, reason)
        self.loop.call_later(RESTART_DELAY, self._restart, name)

    def _restart(self, name: str) -> None:
        if self.stopping or name in self.held:
            return
        if not any(sa.config.name == name and sa.state != IkeState.CLOSED
                   for local in self.locals.values() for sa in local.endpoint.sas.values()):
            self.initiate(name)

    # -- periodic ----------------------------------------------------------------------------
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._check_lifetimes()
            except Exception:
                log.exception("lifetime check failed")
            try:
                self._keepalives(self.now())
            except Exception:
                log.exception("keepalive check failed")

    def _esp_out(self, sa: IkeSa) -> int:
        """ESP packets sent so far on this IKE SA's Child SAs (plain counter loads)."""
        dp = self.dps.get(sa.config.name)
        if dp is None:
            return 0
        return sum(dp.counters(spi)[1].packets for spi in sa.children if spi in dp.children)

    def _keepalives(self, now: float) -> None:
        live: set[tuple[bytes, bytes]] = set()
        for local in self.locals.values():
            driver = local.transport.driver
            ike_sent = driver.last_sent if isinstance(driver, _EventsFirst) else {}
            for sa in local.endpoint.sas.values():
                interval = sa.config.keepalive_s
                if sa.state != IkeState.ESTABLISHED or not sa.encap or interval <= 0:
                    continue
                key = (sa.spi_i, sa.spi_r)
                live.add(key)
                esp = self._esp_out(sa)
                last, seen = self._ka.get(key, (now, esp))
                if esp != seen:
                    last = now  # ESP went out: the NAT mapping is fresh
                last = max(last, ike_sent.get(sa.remote[0], last))
                if now - last >= interval:
                    local.transport.send_keepalive(sa.remote, local.addr)
                    local.transport.counters["keepalive_out"] += 1
                    last = now
                self._ka[key] = (last, esp)
        for key in set(self._ka) - live:
            del self._ka[key]

    def _check_lifetimes(self) -> None:
        for dp in self.dps.values():
            dp.watchdog()
            dp.promote(self.now())
            for spi in dp.soft_expired():
                owner = self._owner_of_child(spi)
                if owner is None:
                    continue
                local, sa = owner
                log.info("%s: Child SA %08x reached its soft byte/packet limit: rekeying", dp.gw.name, spi)
                try:
                    sa.rekey_child(spi, self.now())
                except LocalProtocolError as exc:
                    log.info("%s: rekey %08x not started: %s", dp.gw.name, spi, exc)
                local.transport.pump()

    def _owner_of_child(self, spi: int) -> tuple[_Local, IkeSa] | None:
        for local in self.locals.values():
            for sa in local.endpoint.sas.values():
                if spi in sa.children and sa.state == IkeState.ESTABLISHED:
                    return local, sa
        return None

    # -- operations (control socket) -----------------------------------------------------------
    def initiate(self, name: str) -> str:
        gw = self.cfg.connection(name)
        if gw is None:
            raise ControlError(f"no connection named {name!r}; known: {', '.join(c.name for c in self.cfg.connections)}")
        self.held.discard(name)
        local = self.locals[str(gw.conn.local_address)]
        try:
            sa = local.endpoint.initiate(name, self.now())
        except LocalProtocolError as exc:
            raise ControlError(str(exc)) from None
        self.ike_conn[sa.spi_i] = name
        local.transport.pump()
        log.info("%s: initiating to %s", name, gw.conn.remote_address)
        return sa.spi_i.hex()

    def _all_sas(self) -> list[tuple[_Local, IkeSa]]:
        return [(local, sa) for local in self.locals.values() for sa in list(local.endpoint.sas.values())
                if sa.state != IkeState.CLOSED]

    def _match(self, target: str) -> tuple[list[tuple[_Local, IkeSa]], list[tuple[_Local, IkeSa, int]]]:
        """``target`` -> (IKE SAs, Child SAs (owner, inbound SPI)).  A connection name selects its
        IKE SAs; a hex SPI selects an IKE SA (16 digits) or a Child SA (inbound or outbound)."""
        sas = self._all_sas()
        if self.cfg.connection(target) is not None:
            return [(lo, sa) for lo, sa in sas if sa.config.name == target], []
        t = target.lower().removeprefix("0x")
        try:
            value = int(t, 16)
        except ValueError:
            raise ControlError(f"{target!r} is neither a connection name nor a hex SPI") from None
        ikes = [(lo, sa) for lo, sa in sas if value in (int.from_bytes(sa.spi_i, "big"),
                                                        int.from_bytes(sa.spi_r, "big"))]
        if ikes and len(t) > 8:
            return ikes, []
        kids = [(lo, sa, spi) for lo, sa in sas for spi, ch in sa.children.items()
                if value in (ch.inbound_spi, ch.outbound_spi)]
        if not kids and not ikes:
            raise ControlError(f"no SA with SPI {target}")
        return ikes, kids

    def rekey(self, target: str) -> list[str]:
        ikes, kids = self._match(target)
        done = []
        now = self.now()
        if self.cfg.connection(target) is not None:  # a name: rekey its Child SAs
            kids = [(lo, sa, spi) for lo, sa in ikes for spi, ch in sa.children.items() if not ch.rekeyed]
            ikes = []
        for lo, sa, spi in kids:
            try:
                sa.rekey_child(spi, now)
                done.append(f"child {spi:08x}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        for lo, sa in ikes:
            try:
                sa.rekey_ike(now)
                done.append(f"ike {sa.spi_i.hex()}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        if not done:
            raise ControlError(f"nothing to rekey for {target!r} (no established SA)")
        return done

    def terminate(self, target: str) -> list[str]:
        if self.cfg.connection(target) is not None:
            self.held.add(target)  # an operator's terminate is not undone by a restart
        ikes, kids = self._match(target)
        now = self.now()
        done = []
        for lo, sa, spi in kids:
            try:
                sa.delete_child(spi, now)
                done.append(f"child {spi:08x}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        for lo, sa in ikes:
            self.held.add(sa.config.name)
            try:
                sa.delete(now)
                done.append(f"ike {sa.spi_i.hex()}")
            except LocalProtocolError as exc:
                raise ControlError(str(exc)) from None
            lo.transport.pump()
        if not done:
            raise ControlError(f"nothing to terminate for {target!r}")
        return done

    def list_sas(self) -> list[dict[str, Any]]:
        out = []
        now_wall = time.time()
        now = self.now()
        for _lo, sa in self._all_sas():
            info = self.ike_info.get((sa.spi_i, sa.spi_r), {})
            name = sa.config.name
            d: dict[str, Any] = {
                "name": name, "uniqueid": self._uniqueid(sa.spi_i), "version": 2,
                "state": sa.state.name, "local-host": sa.local[0], "local-port": sa.local[1],
                "local-id": info.get("local_id", str(sa.config.local_id)),
                "remote-host": sa.remote[0], "remote-port": sa.remote[1],
                "remote-id": info.get("remote_id", str(sa.remote_id or "")),
                "initiator": sa.initiator, "initiator-spi": sa.spi_i.hex(), "responder-spi": sa.spi_r.hex(),
                "nat-local": sa.nat_local, "nat-remote": sa.nat_remote,
            }
            if info.get("proposal"):
                d["proposal"] = info["proposal"]
            if "established" in info:
                d["established"] = int(now_wall - info["established"])
            dp = self.dps.get(name)
            children = []
            for spi, ch in sa.children.items():
                k = ch.keys
                c: dict[str, Any] = {
                    "name": name, "uniqueid": self._uniqueid(spi.to_bytes(4, "big")), "reqid": 1,
                    "state": "REKEYED" if ch.rekeyed else "INSTALLED",
                    "mode": k.mode.upper(), "protocol": "ESP", "encap": k.encap,
                    "spi-in": f"{ch.inbound_spi:08x}", "spi-out": f"{ch.outbound_spi:08x}", "proposal": k.proposal,
                    "install-time": int(now_wall - self.child_created.get(spi, now_wall)),
                    "local-ts": [str(t) for t in k.local_ts], "remote-ts": [str(t) for t in k.remote_ts],
                }
                if ch.rekey_at is not None:
                    c["rekey-time"] = max(0, int(ch.rekey_at - now))
                if ch.expire_at is not None:
                    c["life-time"] = max(0, int(ch.expire_at - now))
                if dp is not None and dp.has_spi(spi):
                    cin, cout = dp.counters(spi)
                    c.update({"bytes-in": cin.bytes, "packets-in": cin.packets, "bytes-out": cout.bytes,
                              "packets-out": cout.packets, "backend": dp.mode, "tunnel": dp.gw.tunnel.name})
                children.append(c)
            d["child-sas"] = children
            out.append(d)
        return out

    def counters(self) -> dict[str, Any]:
        conns = {}
        for name, dp in self.dps.items():
            sas = []
            for spi, ch in dp.children.items():
                cin, cout = dp.counters(spi)
                sas.append({"spi_in": f"{spi:08x}", "spi_out": f"{ch.outbound.spi:08x}",
                            "in": dataclasses.asdict(cin), "out": dataclasses.asdict(cout)})
            conns[name] = {"backend": dp.mode, "native": dp.native, "tunnel": dp.gw.tunnel.name,
                           "routes": sorted(str(r) for r in dp.routes), "loop": dp.loop_stats(), "sas": sas}
        ike = {lo.addr: {"transport": dict(lo.transport.counters), "endpoint": dict(lo.endpoint.counters)}
               for lo in self.locals.values()}
        return {"connections": conns, "ike": ike}

    def export_keys(self, out_dir: str) -> dict[str, Any]:
        from ipsecemu.ike.transforms import TransformType
        from ipsecemu.pcap.uat import IkeSaRow, esp_row, write_esp_sa, write_ikev2_table

        rows, ike_rows = [], []
        for _lo, sa in self._all_sas():
            for ch in sa.children.values():
                k = ch.keys
                for cfg, src, dst in ((k.outbound, k.local[0], k.remote[0]), (k.inbound, k.remote[0], k.local[0])):
                    rows.append(esp_row(src, dst, cfg.spi, cfg.encr, cfg.enc_key, cfg.integ, cfg.integ_key))
            if sa.keys is not None and sa.proposal is not None:
                enc = next((t.keyword for t in sa.proposal.transforms if t.type == TransformType.ENCR), "")
                integ = next((t.keyword for t in sa.proposal.transforms if t.type == TransformType.INTEG), "none")
                ks = sa.keys
                ike_rows.append(IkeSaRow(sa.spi_i, sa.spi_r, ks.sk_ei, ks.sk_er, enc, ks.sk_ai, ks.sk_ar, integ))
        d = Path(out_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_esp_sa(d / "esp_sa", rows)
            write_ikev2_table(d / "ikev2_decryption_table", ike_rows)
        except OSError as exc:
            raise ControlError(f"{out_dir}: {exc.strerror}") from None
        log.info("exported keys of %d ESP / %d IKE SAs to %s", len(rows), len(ike_rows), d)  # paths only
        return {"esp_sa": str(d / "esp_sa"), "ikev2_decryption_table": str(d / "ikev2_decryption_table"),
                "esp_rows": len(rows), "ike_rows": len(ike_rows)}

    async def handle(self, req: dict[str, Any]) -> Any:
        cmd = req["cmd"]
        if cmd == "list_sas":
            return self.list_sas()
        if cmd == "counters":
            return self.counters()
        if cmd == "status":
            return {"node": self.cfg.node, "pid": os.getpid(), "connections": [c.name for c in self.cfg.connections]}
        if cmd in ("rekey", "terminate", "initiate"):
            target = req.get("target") or req.get("name")
            if not isinstance(target, str) or not target:
                raise ControlError(f"{cmd}: needs a 'target' (connection name or SPI)")
            return getattr(self, cmd)(target)
        if cmd == "export_keys":
            out = req.get("dir")
            if not isinstance(out, str) or not out:
                raise ControlError("export_keys: needs a 'dir'")
            return self.export_keys(out)
        raise ControlError(f"unknown command {cmd!r}; known: list_sas, counters, status, rekey, terminate, "
                           "initiate, export_keys")

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
