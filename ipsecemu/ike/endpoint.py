"""IkeEndpoint: every IKE SA of one local address, behind the five sans-I/O calls (see ``sa.py``).

It routes datagrams by SPI, creates responder SAs for IKE_SA_INIT requests, and hands out
stateless COOKIEs (RFC 7296 section 2.6) while too many SAs are half-open.  Past the hard cap
``max_half_open`` (default 1000) new IKE_SA_INIT requests are not answered at all, even with a
valid cookie (counter ``half_open_cap``): state stays bounded under a flood; the half-open SAs
time out after ``half_open_timeout_s`` and then new peers get through again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable

from . import message as m
from .consts import Exchange, Notify
from .errors import LocalProtocolError, ParseError
from .events import Event
from .proposals import select
from .sa import Addr, IkeSa, Sink, from_wire
from .settings import Identity, IkeSaConfig
from .states import IkeState
from .tasks.core import ConfigLookup

Rng = Callable[[int], bytes]
_log = logging.getLogger("ipsecemu.ike")


class IkeEndpoint:
    def __init__(self, configs: list[IkeSaConfig], local: Addr, *, rng: Rng | None = None,
                 cookie_threshold: int = 10, max_half_open: int = 1000) -> None:
        self.configs = {c.name: c for c in configs}
        self.local = local
        self._rng: Rng = rng or os.urandom
        self.cookie_threshold = cookie_threshold
        self.max_half_open = max_half_open
        self._cookie_secret = self._rng(32)
        self.counters: dict[str, int] = {}  # also the SAs' counts, as sa_<name> (Sink.totals)
        self._sink = Sink(totals=self.counters)
        self.sas: dict[bytes, IkeSa] = {}  # our SPI -> SA
        self._half_open: dict[tuple[bytes, Addr], IkeSa] = {}  # (SPIi, peer) -> responder SA
        self.last_internal_error: Exception | None = None  # see receive_datagram

    # --- the five driving calls -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float, local: Addr | None = None) -> None:
        try:
            self._receive(data, addr, now, local or self.local)
        except Exception as exc:  # noqa: BLE001 - last resort; the SAs already turn peer errors into drops
            # Anything reaching here is a bug in the core (the fuzz harnesses fail on it): a counted
            # drop and a log line without traceback, never a traceback per datagram from a peer.
            self._count("internal_error")
            self.last_internal_error = exc
            n = self.counters["internal_error"]
            if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: a flood cannot flood the log
                _log.error("IKE datagram from %s dropped: internal error %s: %s (%d so far)",
                           addr[0], type(exc).__name__, exc, n)
            self._housekeeping()

    def _receive(self, data: bytes, addr: Addr, now: float, local: Addr) -> None:
        try:
            msg = m.decode_header(data)
        except ParseError as exc:
            self._count("parse_error")
            if exc.notify == Notify.INVALID_MAJOR_VERSION and len(data) >= m.HEADER_LEN and not data[19] & 0x20:
                self._answer_version(data, addr, local)
            return
        if msg.exchange == Exchange.IKE_SA_INIT and not msg.response and msg.initiator:
            self._sa_init_request(msg, data, addr, local, now)
        else:
            sa = self.sas.get(msg.spi_r if msg.initiator else msg.spi_i)
            if sa is None:
                self._count("unknown_spi")
            else:
                sa.receive_message(msg, data, addr, now, local)
                if sa.peer_initial_contact and sa.state == IkeState.ESTABLISHED:
                    sa.peer_initial_contact = False
                    self._drop_stale(sa, now)
        self._housekeeping()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        out, self._sink.out = self._sink.out, []
        return out

    def get_timer(self) -> float | None:
        times = [t for t in (sa.get_timer() for sa in self.sas.values()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self.sas.values()):
            t = sa.get_timer()
            if t is not None and now >= t:
                sa.handle_timer(now)
        self._housekeeping()

    def next_event(self) -> Event | None:
        return self._sink.events.popleft() if self._sink.events else None

    # --- API ------------------------------------------------------------------------------------------

    def initiate(self, name: str, now: float, remote: Addr | None = None, child: bool = True) -> IkeSa:
        cfg = self.configs.get(name)
        if cfg is None:
            raise LocalProtocolError(f"no connection named {name!r}; known: {', '.join(self.configs)}")
        host = (remote or cfg.remote_addr or (None,))[0]
        sa = IkeSa(cfg, initiator=True, local=self.local, remote=remote, rng=self._rng, sink=self._sink,
                   config_lookup=self._lookup_for(host, cfg))
        self.sas[sa.spi_i] = sa
        sa.initiate(now, child)
        return sa

    def find(self, spi: bytes) -> IkeSa | None:
        return self.sas.get(spi)

    # --- internals ------------------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _housekeeping(self) -> None:
        for new in self._sink.new_sas:
            self.sas[new.local_spi] = new
        self._sink.new_sas.clear()
        for spi, sa in list(self.sas.items()):
            if sa.state == IkeState.CLOSED:
                del self.sas[spi]
        for key, sa in list(self._half_open.items()):
            if sa.state != IkeState.SA_INIT_DONE:
                del self._half_open[key]

    def _drop_stale(self, fresh: IkeSa, now: float) -> None:
        """INITIAL_CONTACT: every other IKE SA of this config with the same peer identity is stale."""
        for sa in list(self.sas.values()):
            if sa is not fresh and sa.remote_id == fresh.remote_id and sa.config.name == fresh.config.name \
                    and sa.state != IkeState.CLOSED:
                sa.close_replaced(now)
                self._count("replaced_by_initial_contact")

    def _lookup_for(self, host: str | None, current: IkeSaConfig) -> ConfigLookup:
        """The IKE_AUTH config lookup of one SA: it knows the peer's address and the config that
        served IKE_SA_INIT (see :meth:`_lookup`)."""
        return lambda peer, ours: self._lookup(peer, ours, host, current)

    def _lookup(self, peer: Identity, ours: Identity | None, host: str | None = None,
                current: IkeSaConfig | None = None) -> IkeSaConfig | None:
        """IKE_AUTH (RFC 7296 section 2.15): first by the peer's address (configs naming it, then
        those accepting any address), then by its identity (exact, then the same distinguished
        name in another string encoding, then a config accepting any identity).  Why address
        first: two connections on one local address that both accept any identity (a lab's
        PSK connections) are told apart only by their peers' addresses.  Still a tie: the IDr
        the peer asked for, then the config that served IKE_SA_INIT; logged, naming both."""
        cfgs = list(self.configs.values())
        if host is None:
            pools = [cfgs]
        else:
            pools = [[c for c in cfgs if c.remote_addr is not None and c.remote_addr[0] == host],
                     [c for c in cfgs if c.remote_addr is None]]
        for pool in pools:
            for fits in (lambda c: c.remote_id == peer,
                         lambda c: c.remote_id is not None and c.remote_id.matches(peer),
                         lambda c: c.remote_id is None):
                found = [c for c in pool if fits(c)]
                if len(found) > 1 and ours is not None:
                    found = [c for c in found if c.local_id.matches(ours)] or found
                if not found:
                    continue
                pick = next((c for c in found if c is current), found[0])
                if len(found) > 1:
                    self._count("ambiguous_config")
                    _log.warning("IKE_AUTH from %s as %s: connections %s all match (same address and "
                                 "identity rules); using %s - set remote_id or remote_address to tell "
                                 "them apart", host or "?", peer, ", ".join(c.name for c in found), pick.name)
                return pick
        return None

    def _cookie(self, msg: m.Message, nonce: bytes, addr: Addr) -> bytes:
        return b"\x00" + hmac.new(self._cookie_secret, nonce + addr[0].encode() + msg.spi_i, hashlib.sha256).digest()

    def _sa_init_request(self, msg: m.Message, data: bytes, addr: Addr, local: Addr, now: float) -> None:
        if msg.spi_r != bytes(8) or msg.msg_id != 0:
            self._count("bad_sa_init")
            return
        existing = self._half_open.get((msg.spi_i, addr))
        if existing is not None:
            existing.receive_message(msg, data, addr, now, local)
            return
        if len(self._half_open) >= self.max_half_open:
            # hard cap: answering (even a cookie) would cost work for a flood; drop and count
            self._count("half_open_cap")
            return
        if len(self._half_open) >= self.cookie_threshold:
            try:
                payloads = m.decode_payloads(data[16], data[m.HEADER_LEN:])
            except ParseError:
                self._count("parse_error")
                return
            nonce = next((p for p in payloads if isinstance(p, m.Nonce)), None)
            if nonce is None:
                return
            want = self._cookie(msg, nonce.data, addr)
            got = payloads[0] if payloads and isinstance(payloads[0], m.Notification) else None
            if got is None or got.type != Notify.COOKIE or not hmac.compare_digest(got.data, want):
                reply = m.Message(msg.spi_i, bytes(8), Exchange.IKE_SA_INIT, 0, False, True,
                                  [m.Notification(Notify.COOKIE, want)])
                self._sink.out.append((reply.encode(), addr, local))
                self._count("cookie_sent")
                return
        cfg = self._config_for(addr, data)
        if cfg is None:
            self._count("no_config")
            return
        sa = IkeSa(cfg, initiator=False, local=local, remote=addr, rng=self._rng, sink=self._sink,
                   config_lookup=self._lookup_for(addr[0], cfg))
        sa.receive_message(msg, data, addr, now, local)
        if sa.state == IkeState.SA_INIT_DONE:
            self.sas[sa.spi_r] = sa
            self._half_open[(msg.spi_i, addr)] = sa

    def _config_for(self, addr: Addr, data: bytes) -> IkeSaConfig | None:
        """A responder config: those naming this peer's address first, then those without one,
        then the rest; among them the first whose IKE proposals match the offer (IKE_AUTH may
        still switch by identity)."""
        cands = [c for c in self.configs.values() if c.remote_addr is not None and c.remote_addr[0] == addr[0]]
        cands += [c for c in self.configs.values() if c.remote_addr is None]
        cands += [c for c in self.configs.values() if c not in cands]
        try:
            sa = next(p for p in m.decode_payloads(data[16], data[m.HEADER_LEN:]) if isinstance(p, m.SA))
            offered = [p for p in from_wire(sa.proposals) if p.protocol == "ike"]
        except (ParseError, StopIteration):
            return cands[0] if cands else None
        return next((c for c in cands if select(c.ike_proposals, offered) is not None), cands[0] if cands else None)

    def _answer_version(self, data: bytes, addr: Addr, local: Addr) -> None:
        """RFC 7296 section 1.5: answer an unknown major version with INVALID_MAJOR_VERSION."""
        reply = m.Message(data[:8], data[8:16], data[18], int.from_bytes(data[20:24], "big"),
                          False, True, [m.Notification(Notify.INVALID_MAJOR_VERSION)])
        self._sink.out.append((reply.encode(), addr, local))
