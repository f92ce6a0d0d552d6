"""The C gateway loop (tun <-> ESP-in-UDP or raw ESP with one peer) and the decoder of the IKE
records it hands to Python."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.dataplane.native.cmodule import check_status, ffi, lib
from ipsecemu.dataplane.native.esp import EspInboundTable, EspOutbound
from ipsecemu.dataplane.selectors import Selector

_EV_REASON = {lib.IE_EV_BYTES: "bytes", lib.IE_EV_PACKETS: "packets", lib.IE_EV_SEQ: "seq", lib.IE_EV_PN: "pn"}


@dataclass(frozen=True)
class LoopEvent:
    """An expire event the loop raised at once: on its outbound SA (``sa``: ``EspUdpLoop.sa_id``)
    or on the inbound SA ``spi``; ``kind`` "soft"/"hard", ``reason`` "bytes"/"packets"/"seq"."""

    outbound: bool
    sa: int
    spi: int
    kind: str
    reason: str


class EspUdpLoop:
    """The C gateway loop: tun <-> ESP-in-UDP (RFC 3948) with one peer, batched, no Python per
    packet.  ``run()`` blocks (without the GIL) until ``stop()``; ``start()`` runs it on a thread.

    IKE datagrams (non-ESP marker) arriving on the UDP socket are sent to ``ike_fd`` (an
    AF_UNIX SOCK_DGRAM socket) one message each; :func:`parse_ike_record` decodes them.
    ``raw_esp=True``: ``udp_fd`` is a raw IP protocol 50 socket instead (peer port ignored).
    The SA objects must stay alive and must not be used from Python while the loop runs, except
    inside ``with loop.paused():`` (the loop waits between batches): there the inbound table may
    be edited and ``set_outbound`` switches the outbound SA, so a rekey needs no stop/start.
    An ICMP error on the socket (peer restarting) is counted in ``stats["sock_errors"]``.
    ESP-in-UDP uses UDP GSO on send (``gso``) and UDP GRO on receive (``gro``; switched off
    again when the loop is freed); ``sock_buf`` raises the socket buffers (forced as root).
    ``tun_vnet=True``: the tun was opened with ``ipsecemu.net.tun.open_tun(vnet_hdr=True)``; the loop turns on TSO so the
    kernel hands over TCP super-packets, which it cuts into segments itself (off again on free,
    but every packet read or written by others then carries a 10-byte zero header: net.tun.VNET_HDR).
    ``transport=True`` (with ``local``, this host's address): transport-mode ESP (RFC 4303
    §3.1.1) between this host and the peer: packets from tun (to the peer, whole) lose their IP
    header and go as ESP with next header = their protocol; decapsulated data gets a header
    peer -> local back (TCP/UDP checksum recomputed after UDP encapsulation, RFC 3948 §3.1.3).
    No UDP GRO on receive in that mode.
    """

    def __init__(self, *, tun_fd: int, udp_fd: int, peer: tuple[str, int], outbound: EspOutbound,
                 inbound: EspInboundTable, ike_fd: int = -1, batch: int = 32, mtu: int = 1500,
                 poll_ms: int = 50, raw_esp: bool = False, gso: bool = True, gro: bool = True,
                 sock_buf: int = 4 << 20, tun_vnet: bool = False, transport: bool = False,
                 local: str | None = None) -> None:
        if outbound._sa is None:
            raise ConfigError(f"encr: the C loop needs a C-path SA, not {outbound.cfg.encr}")
        if not 1 <= batch <= lib.IE_LOOP_MAX_BATCH:
            raise ConfigError(f"batch: must be 1..{lib.IE_LOOP_MAX_BATCH}, got {batch}")
        if not 68 <= mtu <= 65535:
            raise ConfigError(f"mtu: must be 68..65535, got {mtu}")
        if tun_fd < 0 or udp_fd < 0:
            raise ConfigError("tun_fd/udp_fd: need open file descriptors")
        if not 0 <= sock_buf <= 1 << 30:
            raise ConfigError(f"sock_buf: must be 0..{1 << 30} bytes, got {sock_buf}")
        try:
            addr = ipaddress.ip_address(peer[0])
        except ValueError as exc:
            raise ConfigError(f"peer: {exc}") from None
        local_packed = b""
        if transport:
            try:
                local_ip = ipaddress.ip_address(local or "")
            except ValueError as exc:
                raise ConfigError(f"local: transport mode needs this host's address ({exc})") from None
            if local_ip.version != addr.version:
                raise ConfigError(f"local: {local_ip} and the peer {addr} are of different families")
            local_packed = local_ip.packed
        c = ffi.new("ie_loop_cfg *")
        c.tun_fd, c.udp_fd, c.ike_fd = tun_fd, udp_fd, ike_fd
        c.peer_family = addr.version
        c.peer_addr = addr.packed + bytes(16 - len(addr.packed))
        c.peer_port = peer[1]
        c.batch, c.mtu, c.poll_ms = batch, mtu, poll_ms
        c.raw_esp = int(raw_esp)
        c.offload = (lib.IE_LOOP_UDP_GSO if gso else 0) | (lib.IE_LOOP_UDP_GRO if gro else 0)
        c.sock_buf = sock_buf
        c.tun_vnet = int(tun_vnet)
        if transport:
            c.transport = 1
            c.local_addr = local_packed + bytes(16 - len(local_packed))
        out = ffi.new("ie_loop **")
        check_status(lib.ie_loop_new(c, outbound._sa, inbound._c.t, out),
               "gateway loop (tun_vnet must match how the tun was opened)")
        self._loop = ffi.gc(out[0], lib.ie_loop_free)
        self._keep = (outbound, inbound)  # borrowed by C: keep them alive
        self.outbound, self.inbound = outbound, inbound
        self._held = False
        self._policies: dict[int, EspOutbound] = {}  # outbound slot -> its SA (borrowed by C)
        self._thread: threading.Thread | None = None
        self.result: int | None = None

    def run(self) -> int:
        self.result = int(lib.ie_loop_run(self._loop))
        return self.result

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ipsecemu-esp-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        lib.ie_loop_stop(self._loop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def step(self, timeout_ms: int = 0) -> int:
        return int(lib.ie_loop_step(self._loop, timeout_ms))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the loop between batches while the block changes SAs (one control thread;
        nesting is fine).  Packets arriving meanwhile wait in the kernel queues."""
        if self._held:
            yield
            return
        lib.ie_loop_pause(self._loop)  # cffi drops the GIL while this waits for the batch to end
        self._held = True
        try:
            yield
        finally:
            self._held = False
            lib.ie_loop_resume(self._loop)

    def set_outbound(self, outbound: EspOutbound) -> EspOutbound:
        """Send with ``outbound`` from the next batch on; returns the previous SA (no longer
        used by the loop)."""
        if outbound._sa is None:
            raise ConfigError(f"encr: the C loop needs a C-path SA, not {outbound.cfg.encr}")
        with self.paused():
            lib.ie_loop_set_out(self._loop, outbound._sa)
            old, self.outbound = self.outbound, outbound
            self._keep = (outbound, self.inbound)
        return old

    def set_out_policy(self, slot: int, outbound: EspOutbound | None, local: Sequence[Selector] = (),
                       remote: Sequence[Selector] = ()) -> None:
        """Several Child SAs with this peer: a packet from the tun whose source fits ``local``
        and destination fits ``remote`` leaves on ``outbound`` (the lowest matching slot wins);
        ``None`` clears the slot.  While any slot is set, a packet no slot matches is dropped
        and counted (``stats["no_policy"]``)."""
        if outbound is not None and outbound._sa is None:
            raise ConfigError(f"encr: the C loop needs a C-path SA, not {outbound.cfg.encr}")
        cl, nl = c_selectors(local)
        cr, nr = c_selectors(remote)
        with self.paused():
            check_status(lib.ie_loop_set_out_policy(self._loop, slot, outbound._sa if outbound else ffi.NULL,
                                                    cl, nl, cr, nr), f"outbound policy slot {slot}")
            if outbound is None:
                self._policies.pop(slot, None)
            else:
                self._policies[slot] = outbound

    def set_in_policy(self, spi: int, local: Sequence[Selector], remote: Sequence[Selector]) -> None:
        """Inbound SA ``spi``: a decapsulated packet must come from ``remote`` and go to
        ``local``, else it is dropped and counted (``stats["ts_drop"]``)."""
        cl, nl = c_selectors(local)
        cr, nr = c_selectors(remote)
        with self.paused():
            check_status(lib.ie_loop_set_in_policy(self._loop, spi, cl, nl, cr, nr), f"inbound selectors of {spi:08x}")

    def del_in_policy(self, spi: int) -> None:
        with self.paused():
            lib.ie_loop_del_in_policy(self._loop, spi)  # IE_S_ENOENT: never set, nothing to do

    def out_slot(self, pkt: bytes) -> int | None:
        """The outbound policy slot ``pkt`` would leave on (None: no slot matches; -2: no
        policies, the loop's own SA)."""
        with self.paused():
            r = int(lib.ie_loop_out_slot(self._loop, pkt, len(pkt)))
        return None if r == -1 else r

    def in_ok(self, spi: int, pkt: bytes) -> bool:
        """Whether inbound SA ``spi`` accepts the decapsulated ``pkt`` (its selectors)."""
        with self.paused():
            return bool(lib.ie_loop_in_ok(self._loop, spi, pkt, len(pkt)))

    def set_wakeup(self, event_fd: int) -> None:
        """From now on the loop pops the expire events of its SAs itself, queues them and writes
        ``event_fd`` (an eventfd) at once: the control side learns of a soft limit within a batch
        instead of at its next poll (see ``events``).  -1 switches it off."""
        lib.ie_loop_set_wakeup(self._loop, event_fd)

    def events(self) -> list[LoopEvent]:
        """The expire events the loop raised since the last call (after ``set_wakeup``)."""
        buf = ffi.new("ie_loop_event[]", 64)
        out: list[LoopEvent] = []
        while n := lib.ie_loop_events(self._loop, buf, 64):
            for e in buf[0:n]:
                out.append(LoopEvent(bool(e.outbound), int(e.sa), int(e.spi),
                                     "soft" if e.code & lib.IE_EV_SOFT else "hard", _EV_REASON.get(e.code & 15, "?")))
        return out

    def sa_id(self, outbound: EspOutbound) -> int:
        """What ``LoopEvent.sa`` says for events of ``outbound``."""
        return int(ffi.cast("uintptr_t", outbound._sa))

    @property
    def stats(self) -> dict[str, int]:
        s = ffi.new("ie_loop_stats *")
        lib.ie_loop_get_stats(self._loop, s)
        return {name: getattr(s, name) for name, _ in ffi.typeof("ie_loop_stats").fields}


def c_selectors(sels: Sequence[Selector]) -> tuple[Any, int]:
    """Selectors -> (``ie_ts[]``, count) for the C loop."""
    if len(sels) > lib.IE_LOOP_MAX_TS:
        raise ConfigError(f"traffic selectors: the C loop takes at most {lib.IE_LOOP_MAX_TS} per side, got {len(sels)}")
    arr = ffi.new("ie_ts[]", max(1, len(sels)))
    for i, t in enumerate(sels):
        a, b = t.start_addr.packed, t.end_addr.packed
        arr[i].family = t.start_addr.version
        arr[i].proto = t.ip_proto
        arr[i].port_lo, arr[i].port_hi = t.start_port, t.end_port
        arr[i].start = a + bytes(16 - len(a))
        arr[i].end = b + bytes(16 - len(b))
    return arr, len(sels)


def parse_ike_record(record: bytes) -> tuple[tuple[str, int], bytes]:
    """Decode one message the loop wrote to ``ike_fd``: ((address, port), IKE message)."""
    if len(record) < 19 or record[0] not in (4, 6):
        raise ValueError("not an ipsecemu IKE record")
    raw = record[1:5] if record[0] == 4 else record[1:17]
    return (str(ipaddress.ip_address(raw)), int.from_bytes(record[17:19], "big")), record[19:]
