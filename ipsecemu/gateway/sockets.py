"""The gateway's sockets besides the IKE transport's: the socketpair over which a C loop hands IKE
datagrams (NAT-T port) back, and each connection's own connected ESP socket (UDP or raw)."""

from __future__ import annotations

import logging
import socket

from ipsecemu.gateway.datapath import ConnectionDatapath, Port
from ipsecemu.ike.events import ChildSaKeys
from ipsecemu.io.transport import NON_ESP_MARKER

from .driver import GatewayState, LocalAddress

log = logging.getLogger("ipsecemu.gateway")

__all__ = ["Sockets"]


class Sockets(GatewayState):
    """Mixin of :class:`~ipsecemu.gateway.daemon.Gateway`: socket setup and the input glue."""

    def _setup_udp(self, local: LocalAddress, nat_port: int) -> None:
        """The socketpair over which C loops hand IKE datagrams (NAT-T port) back to us."""
        local.nat_port = nat_port
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        local.ike_pair = (a, b)
        self.loop.add_reader(b.fileno(), self._on_ike_record, local, b, nat_port)

    def _port_for(self, local: LocalAddress, name: str, keys: ChildSaKeys) -> Port | None:
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

    def _on_ike_record(self, local: LocalAddress, sock: socket.socket, nat_port: int) -> None:
        # records only arrive once a C loop runs
        from ipsecemu.dataplane.native.gateway_loop import parse_ike_record  # lazy: needs the C module

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

    def _on_port(self, local: LocalAddress, sock: socket.socket, udp: bool, v6: bool) -> None:
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
