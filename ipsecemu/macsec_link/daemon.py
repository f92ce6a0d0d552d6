"""The MACsec link daemon: one end of an ExpressRoute Direct style CE <-> MSEE link (scenario S4).

The node's layer 2 is a tap (its L3 side, addresses go there); the veth under it (the "phy")
carries only MACsec (EtherType 0x88E5) and EAPOL-MKA (0x888E).  The C loop
(:class:`ipsecemu.dataplane.native.macsec_loop.MacsecLinkLoop`) moves every data frame; this module runs the
MKA participant on asyncio over its own AF_PACKET socket for 0x888E on the phy and applies the SA
events to the loop between batches.  Config keys follow Azure's names (``cipher``,
``sci_state``, ``cak``, ``ckn``) plus ``replay_window``, ``validate``, ``key_server_priority``.

Status (no keys) is written as JSON to ``status_path``; the SAKs in use (and a few before them)
to ``keys_path`` as the MACsec SA JSON of :mod:`ipsecemu.pcap.macsec_sa` (mode 0600) for ``pcap
decrypt``.  SIGUSR1 forces a SAK rotation; SIGTERM/SIGINT stop the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig
from ipsecemu.config.macsec_link import LinkConfig
from ipsecemu.macsec.mka import (
    InstallRxSa,
    InstallTxSa,
    KeyServerElected,
    MkaParticipant,
    PeerLive,
    PeerLost,
    RemoveSa,
)
from ipsecemu.net.tun import TunError, clear_offload, open_tun
from ipsecemu.pcap.macsec_sa import write_macsec_sa

log = logging.getLogger("ipsecemu.macsec_link.daemon")

ETH_P_ALL = 0x0003
ETH_P_PAE = 0x888E
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: the data socket never sees our own frames
SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
RX_REMOVE_DELAY = 1.0  # s: frames of the old key still queued on the phy socket get validated
KEY_HISTORY = 16  # SAKs kept in the key file (a capture may span several rotations)

# ------------------------------------------------------------------ interfaces


def _ifreq(name: str, request: int) -> bytes:
    if not 0 < len(name) <= 15:
        raise ConfigError(f"interface name {name!r}: must be 1-15 characters")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return fcntl.ioctl(s.fileno(), request, struct.pack("16s16x", name.encode()))
        except OSError:
            raise ConfigError(f"interface {name!r}: no such device in this network namespace") from None


def if_mac(name: str) -> bytes:
    return _ifreq(name, SIOCGIFHWADDR)[18:24]


def if_mtu(name: str) -> int:
    return int(struct.unpack("i", _ifreq(name, SIOCGIFMTU)[16:20])[0])


def if_up(name: str) -> bool:
    """Administratively up (False also when it is gone: the C loop reports that itself)."""
    try:
        return bool(struct.unpack("H", _ifreq(name, SIOCGIFFLAGS)[16:18])[0] & IFF_UP)
    except ConfigError:
        return False


def open_tap(name: str, vnet: bool = True) -> int:
    """Attach to the (persistent) tap ``name``; the kernel creates it if it does not exist.
    ``vnet``: with a virtio_net_hdr per frame, so the C loop can take TSO super-packets."""
    try:
        return open_tun(name, tap=True, vnet_hdr=vnet, blocking=True)
    except TunError as exc:
        raise ConfigError(f"{exc}; is it a tap, and is another daemon already using it?") from None


def packet_socket(ifname: str, proto: int, buf: int = 4 << 20) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    try:
        s.bind((ifname, proto))
    except OSError as exc:
        s.close()
        raise ConfigError(f"phy {ifname!r}: cannot bind ({exc.strerror})") from None
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, buf)
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # older kernel: the C loop skips PACKET_OUTGOING frames itself
    s.setblocking(False)
    return s


def _quiet_phy(phy: str) -> None:
    """The phy carries only MACsec and MKA: no IPv6 link-local chatter (ND, MLD) in clear."""
    try:
        Path(f"/proc/sys/net/ipv6/conf/{phy}/disable_ipv6").write_text("1")
    except OSError:
        pass  # IPv6 off or not permitted: the peer just counts those frames as unprotected


# ------------------------------------------------------------------ the daemon


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class LinkDaemon:
    """One end of a MACsec link: tap + phy in the current netns, MKA + the C loop."""

    def __init__(self, cfg: LinkConfig, tap: str, phy: str, *, status_path: str | Path | None = None,
                 keys_path: str | Path | None = None, batch: int = 64) -> None:
        # lab imports this module for read_status alone, on hosts without the C module too
        from ipsecemu.dataplane.native.macsec_loop import MacsecLinkLoop  # lazy: C module may be unbuilt

        self.cfg = cfg
        self.tap, self.phy = tap, phy
        self.status_path = Path(status_path) if status_path else None
        self.keys_path = Path(keys_path) if keys_path else None
        mac = if_mac(tap)
        if_mac(phy)  # exists?
        _quiet_phy(phy)
        self.sci = mac + b"\x00\x01"
        self.max_frame = if_mtu(tap) + 14  # the loop adds the VLAN tag(s) itself
        self.participant = MkaParticipant(
            cfg.cak, cfg.ckn, self.sci, cfg.key_server_priority, cfg.cipher, cfg.include_sci,
            hello_time=cfg.hello_time, life_time=cfg.life_time, pn_exhaustion_threshold=cfg.pn_exhaustion_threshold)
        self._tap_fd = open_tap(tap, vnet=cfg.offload)
        try:
            self._data = packet_socket(phy, ETH_P_ALL)
            self._mka = packet_socket(phy, ETH_P_PAE, 1 << 20)
            self.loop = MacsecLinkLoop(tap_fd=self._tap_fd, phy_fd=self._data.fileno(), secy=cfg.secy(),
                                       batch=batch, max_frame=self.max_frame, vlan=cfg.vlan, qinq=cfg.qinq,
                                       tap_vnet=cfg.offload)
        except BaseException:
            os.close(self._tap_fd)
            raise
        self._pending_rx_removal: dict[tuple[bytes, int], float] = {}
        self._rx_ki: dict[tuple[bytes, int], bytes] = {}  # (SCI, AN) -> key identifier installed there
        self._tx_ki = b""
        self._keys: dict[tuple[bytes, int, bytes], MacsecSaConfig] = {}
        self.rotations = 0
        self.started = time.time()
        self._wake: asyncio.Event | None = None
        self._stop = False
        self._last_status = 0.0
        self.failed: str | None = None
        self.phy_flaps = 0  # times the phy went down under us (a port flap is survived, not fatal)
        self._phy_down_since: float | None = None
        self._c_phy_down = 0  # the C loop's phy_down counter as last seen

    def close(self) -> None:
        self.loop.stop()
        self._data.close()
        self._mka.close()
        clear_offload(self._tap_fd)  # TSO stays on the persistent tap otherwise: the next reader may be a plain one
        os.close(self._tap_fd)

    # -------------------------------------------------------------- MKA plumbing
    def _on_mka_readable(self) -> None:
        now = time.monotonic()
        while True:
            try:
                frame, addr = self._mka.recvfrom(9000)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:
                    self._phy_down("mka socket: network is down")
                else:
                    log.warning("mka socket: %s", exc.strerror)
                break
            if len(addr) > 2 and addr[2] == PACKET_OUTGOING:
                continue
            self.participant.receive(frame, now)
        self._kick()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def rekey(self) -> None:
        log.info("forced SAK rotation requested")
        self.participant.rekey()
        self._kick()

    def _send(self, now: float) -> None:
        for frame in self.participant.frames_to_send(now):
            try:
                self._mka.send(frame)
            except OSError as exc:  # e.g. the peer end is down: MKA retries at the next hello
                if exc.errno == errno.ENETDOWN:
                    self._phy_down("sending MKPDU: network is down")
                elif self._phy_down_since is None:
                    log.warning("sending MKPDU: %s", exc.strerror)

    # -------------------------------------------------------------- phy down/up (port flap)
    def _phy_down(self, reason: str) -> None:
        """Logged once per flap: the sockets survive it (the kernel re-attaches them when the
        port comes back up) and MKA re-secures the link once the peer is heard again."""
        if self._phy_down_since is not None:
            return
        self._phy_down_since = time.monotonic()
        self.phy_flaps += 1
        peers = ",".join(s.hex() for s, _ in self.participant.live_peers) or "none live"
        log.warning("link %s: phy %s down (peer %s): %s; waiting for it to come back",
                    self.tap, self.phy, peers, reason)

    def _check_phy(self) -> None:
        c_down = self.loop.stats["phy_down"]
        if c_down != self._c_phy_down:
            self._c_phy_down = c_down
            self._phy_down("data path: network is down")
        if self._phy_down_since is not None and if_up(self.phy):
            log.info("link %s: phy %s up again after %.1f s; waiting for MKA to re-secure it",
                     self.tap, self.phy, time.monotonic() - self._phy_down_since)
            self._phy_down_since = None

    def _remember_key(self, sa: MacsecSaConfig) -> None:
        self._keys[(sa.sci, sa.an, sa.sak)] = sa
        while len(self._keys) > KEY_HISTORY:
            self._keys.pop(next(iter(self._keys)))
        if self.keys_path is not None:
            write_macsec_sa(self.keys_path, list(self._keys.values()))

    def _apply_events(self, now: float) -> bool:
        changed = False
        while (ev := self.participant.next_event()) is not None:
            changed = True
            if isinstance(ev, InstallRxSa):
                self._pending_rx_removal.pop((ev.sa.sci, ev.sa.an), None)
                self.loop.add_rx_sa(ev.sa)  # replaces an SA of an older key under this AN
                self._rx_ki[(ev.sa.sci, ev.sa.an)] = ev.ki
                self._remember_key(ev.sa)
                log.info("installed rx SA sci=%s an=%d", ev.sa.sci.hex(), ev.sa.an)
            elif isinstance(ev, InstallTxSa):
                self.loop.set_tx(ev.sa)
                self._tx_ki = ev.ki
                self._remember_key(ev.sa)
                self.rotations += 1
                log.info("transmitting with SA an=%d (key %d)", ev.sa.an, self.rotations)
            elif isinstance(ev, RemoveSa):
                # keyed by (AN, key identifier): a removal meant for an older key under a reused
                # AN must not take the new SA with it
                if ev.direction == "tx":
                    if self.loop.tx is not None and self.loop.tx.sa.an == ev.an and self._tx_ki == ev.ki:
                        self.loop.set_tx(None)
                        log.info("tx SA an=%d removed: not transmitting", ev.an)
                elif self._rx_ki.get((ev.sci, ev.an)) != ev.ki:
                    log.debug("rx SA sci=%s an=%d already replaced by a newer key", ev.sci.hex(), ev.an)
                elif self.participant.live_peers:
                    # in-flight frames of the old key may still sit in the phy socket queue
                    self._pending_rx_removal[(ev.sci, ev.an)] = now + RX_REMOVE_DELAY
                else:
                    self._remove_rx(ev.sci, ev.an)
            elif isinstance(ev, PeerLive):
                log.info("peer live: sci=%s", ev.sci.hex())
            elif isinstance(ev, PeerLost):
                log.warning("peer lost: sci=%s", ev.sci.hex())
            elif isinstance(ev, KeyServerElected):
                log.info("key server: %s", "us" if ev.is_self else ev.sci.hex() if ev.sci else "none")
        for key, when in list(self._pending_rx_removal.items()):
            if when <= now:
                del self._pending_rx_removal[key]
                self._remove_rx(*key)
        return changed

    def _remove_rx(self, sci: bytes, an: int) -> None:
        self._rx_ki.pop((sci, an), None)
        try:
            self.loop.remove_rx_sa(sci, an)
            log.info("removed rx SA sci=%s an=%d", sci.hex(), an)
        except ConfigError:
            pass  # already replaced or gone

    def _poll_pn(self) -> None:
        tx = self.loop.tx
        if tx is not None and any(e.kind == "soft" for e in tx.poll_events()):
            log.info("PN exhaustion threshold reached: asking for a new SAK")
            self.participant.pn_exhausting()

    # -------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        p = self.participant
        tx = self.loop.tx
        rx = []
        for (sci, an) in sorted(p.installed_rx):
            try:
                c = self.loop.rx_counters_for(sci, an)
            except ConfigError:
                continue
            rx.append({"sci": sci.hex(), "an": an, "packets": c.packets, "bytes": c.bytes,
                       "bad_icv": c.bad_icv, "replay": c.replay})
        key = p.latest_key
        return {
            "pid": os.getpid(), "tap": self.tap, "phy": self.phy, "sci": self.sci.hex(), "mi": p.mi.hex(),
            "config": self.cfg.public(), "updated": time.time(), "started": self.started,
            "live_peers": [s.hex() for s, _ in p.live_peers],
            "potential_peers": [s.hex() for s, _ in p.potential_peers],
            "key_server": p.key_server.hex() if p.key_server else None, "is_key_server": p.is_key_server,
            "latest_key": {"kn": key[1], "an": key[2]} if key else None,
            "tx": {"an": tx.sa.an, "next_pn": tx.next_pn, "packets": tx.counters.packets} if tx else None,
            "rx": rx, "secured": tx is not None and bool(rx), "sak_installs": self.rotations,
            "loop": self.loop.stats, "secy_rx_drops": vars(self.loop.rx_counters),
            "mka": vars(p.counters), "phy_down": self._phy_down_since is not None, "phy_flaps": self.phy_flaps,
        }

    def _write_status(self) -> None:
        if self.status_path is not None:
            _write_atomic(self.status_path, json.dumps(self.status(), indent=1, sort_keys=True) + "\n")
        self._last_status = time.monotonic()

    # -------------------------------------------------------------- main loop
    async def run(self) -> None:
        aloop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        aloop.add_reader(self._mka.fileno(), self._on_mka_readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            aloop.add_signal_handler(sig, self.request_stop)
        aloop.add_signal_handler(signal.SIGUSR1, self.rekey)
        self.loop.start()
        log.info("link %s over %s: sci=%s %s", self.tap, self.phy, self.sci.hex(), self.cfg.public())
        try:
            while not self._stop:
                if self.loop.result is not None:  # the C loop ended by itself: a fatal fd error
                    self.failed = f"data path stopped: {os.strerror(-self.loop.result) if self.loop.result < 0 else 'unexpectedly'}"
                    log.error("%s (was the tap or the phy deleted?)", self.failed)
                    break
                self._check_phy()
                now = time.monotonic()
                t = self.participant.get_timer()
                if t is not None and t <= now:
                    self.participant.handle_timer(now)
                self._send(now)
                changed = self._apply_events(now)
                self._send(now)  # events may have queued an immediate MKPDU
                self._poll_pn()
                if changed or now - self._last_status >= 1.0:
                    self._write_status()
                t = self.participant.get_timer()
                delay = 0.5 if t is None else min(0.5, max(0.0, t - time.monotonic()))
                if self._pending_rx_removal or self.loop.tx is not None:
                    delay = min(delay, 0.1)  # PN soft events are polled: react within 0.1 s
                if self._phy_down_since is not None:
                    delay = min(delay, 0.2)  # poll for the port coming back
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            aloop.remove_reader(self._mka.fileno())
            self.loop.stop()
            self._write_status()
            log.info("stopped: %s", json.dumps(self.loop.stats))

    def request_stop(self) -> None:
        self._stop = True
        self._kick()


def read_status(path: str | Path) -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads(Path(path).read_text())
        return status
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read status: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a link status file") from None
