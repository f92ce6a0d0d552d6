"""A sans-I/O MKA participant with a static (pre-shared) CAK — IEEE 802.1X-2010/2020 clause 9.

No sockets, no clock, no randomness inside: frames come in through :meth:`receive`, go out
through :meth:`frames_to_send`, time is the ``now`` argument (seconds, any monotonic origin),
and member identifiers / KS-nonces come from the injectable ``random(n) -> bytes``.  The
caller drives one timer (:meth:`get_timer` / :meth:`handle_timer`) and applies the SA events
from :meth:`next_event` to the data plane.

Protocol summary (what this implementation does):

* Every MKPDU carries our MI and an increasing MN.  A peer is *potential* when we receive a
  valid MKPDU from it, and *live* once it lists our MI with an MN we sent within the life
  time.  A peer not heard from (as live) for ``life_time`` is dropped with its SAs.
* Key server: among us and the live peers, the lowest (priority, SCI); priority 255 never.
* The key server derives a SAK with the KDF from a fresh KS-nonce whenever the set of live
  peers changes, on :meth:`rekey`, and when a peer reports a lowest PN at the exhaustion
  threshold; it distributes it (AES key wrap with the KEK) until every member reports it.
* Install order (make-before-break): on a new SAK every participant installs Rx SAs for all
  members and reports "latest Rx"; the key server installs Tx once every live peer reports
  Rx, the others once the key server reports Tx.  The previous key's Rx SA for a peer is
  removed only after that peer reports transmitting with the new key.
* XPN: SSCIs are assigned 1, 2, ... to the members' SCIs in ascending order (the key
  server's own SSCI is announced in the Live Peer List); the salt is built from the key
  server's MI and the KN (802.1AE-2018 10.7.28).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ipsecemu.base.algorithms import MACSEC_CIPHERS
from ipsecemu.base.errors import ConfigError
from ipsecemu.base.satypes import MacsecSaConfig, SecYConfig
from ipsecemu.macsec.mka import kdf
from ipsecemu.macsec.mka.events import (
    InstallRxSa,
    InstallTxSa,
    KeyServerElected,
    MkaEvent,
    PeerLive,
    PeerLost,
    RemoveSa,
)
from ipsecemu.macsec.mka.mkpdu import (
    ALGORITHM_AGILITY,
    CIPHER_BY_SUITE,
    CIPHER_SUITES,
    BasicParameterSet,
    DistributedSak,
    Mkpdu,
    MkpduError,
    PeerEntry,
    SakUse,
    XpnParameterSet,
    encode_frame,
    parse_frame,
    verify,
)

NOT_KEY_SERVER = 255  # key server priority meaning "never elect me"


def _ki(key: _Key) -> bytes:
    """The key identifier (802.1X-2020 9.8.1): key server MI || KN."""
    return key.ks_mi + key.kn.to_bytes(4, "big")


@dataclass
class MkaCounters:
    """Why received MKPDUs were ignored, and how many were sent / accepted."""

    tx: int = 0
    rx_ok: int = 0
    malformed: int = 0
    other_ca: int = 0  # valid frame for a different CKN
    bad_icv: int = 0
    replay: int = 0  # MN not above the last one seen from that MI
    own: int = 0  # our own MI (looped back)
    unsupported: int = 0  # unknown algorithm agility
    cipher_mismatch: int = 0
    bad_sak: int = 0  # SAK unwrap failed / wrong length


@dataclass
class _Peer:
    mi: bytes
    mn: int
    sci: bytes
    priority: int
    expires: float
    live: bool = False
    sak_use: SakUse | None = None
    xpn: XpnParameterSet | None = None


@dataclass
class _Key:
    ks_mi: bytes
    kn: int
    an: int
    sak: bytes = field(repr=False)
    salt: bytes | None = field(repr=False)
    sscis: dict[bytes, int]
    members: frozenset[bytes]  # MIs of the peers the SAK was distributed to (not us)
    rx: set[bytes] = field(default_factory=set)  # SCIs with an installed Rx SA
    tx: bool = False
    rekey_requested: bool = False


class MkaParticipant:
    """One MKA participant of a CA identified by (CAK, CKN)."""

    def __init__(
        self,
        cak: bytes,
        ckn: bytes,
        sci: bytes,
        key_server_priority: int = 0x10,
        cipher: str = "gcm-aes-128",
        include_sci: bool = True,
        *,
        confidentiality: bool = True,
        random: Callable[[int], bytes] = os.urandom,
        hello_time: float = 2.0,
        life_time: float = 6.0,
        pn_exhaustion_threshold: int = 0xC0000000,
    ) -> None:
        if cipher not in MACSEC_CIPHERS:
            raise ConfigError(f"cipher: unknown MACsec cipher {cipher!r}; known: {', '.join(MACSEC_CIPHERS)}")
        if len(sci) != 8:
            raise ConfigError(f"sci: must be 8 bytes (MAC || port), got {len(sci)}")
        if not include_sci and sci[6:] != b"\x00\x01":
            # Without an explicit SCI the receiver uses source MAC || 0x0001.
            raise ConfigError("sci: with include_sci off the port identifier must be 0x0001")
        if not 0 <= key_server_priority <= 255:
            raise ConfigError(f"key_server_priority: must be 0..255, got {key_server_priority}")
        if not 0 < hello_time < life_time:
            raise ConfigError("hello_time/life_time: need 0 < hello_time < life_time")
        try:
            self._ick = kdf.derive_ick(cak, ckn)
            self._kek = kdf.derive_kek(cak, ckn)
        except kdf.MkaKeyError as exc:
            raise ConfigError(str(exc)) from None
        self._cak = cak
        self.ckn = ckn
        self.sci = sci
        self.priority = key_server_priority
        self.cipher = cipher
        self.include_sci = include_sci
        self.confidentiality = confidentiality
        self.hello_time = hello_time
        self.life_time = life_time
        self.pn_exhaustion_threshold = pn_exhaustion_threshold
        self._random = random
        self._sak_len, self._xpn = MACSEC_CIPHERS[cipher]
        self.mi = self._random(kdf.MI_LEN)
        if len(self.mi) != kdf.MI_LEN:
            raise ConfigError("random: must return the number of bytes asked for")
        self.mn = 0
        self.counters = MkaCounters()
        self._peers: dict[bytes, _Peer] = {}
        self._sent: deque[tuple[float, int]] = deque()  # (time, MN) of recent MKPDUs
        self._events: deque[MkaEvent] = deque()
        self._next_hello: float | None = None  # None: send at the first opportunity
        self._need_send = True
        self._key_server: bytes | None = None  # SCI of the elected key server
        self._kn = 0  # last KN we generated as key server
        self._last_an = 3  # AN of the last SAK we generated (the first one gets AN 0)
        self._latest: _Key | None = None
        self._old: _Key | None = None
        self._distributing: DistributedSak | None = None
        self._pn_report = 1  # lowest PN we report for the latest key
        self.installed_tx: MacsecSaConfig | None = None
        self.installed_rx: dict[tuple[bytes, int], MacsecSaConfig] = {}

    def __repr__(self) -> str:  # never show key material
        return f"MkaParticipant(sci={self.sci.hex()}, mi={self.mi.hex()}, cipher={self.cipher})"

    # ------------------------------------------------------------------ public API

    def secy_config(self, **overrides: object) -> SecYConfig:
        """The SecY settings matching this participant (SCI on/off); other fields default."""
        opts: dict[str, object] = {
            "include_sci": self.include_sci,
            "end_station": not self.include_sci,
            "confidentiality": self.confidentiality,
        }
        opts.update(overrides)
        return SecYConfig(**opts)  # type: ignore[arg-type]

    @property
    def is_key_server(self) -> bool:
        return self._key_server == self.sci

    @property
    def key_server(self) -> bytes | None:
        return self._key_server

    @property
    def live_peers(self) -> list[tuple[bytes, bytes]]:
        """(SCI, MI) of every live peer."""
        return [(p.sci, p.mi) for p in self._peers.values() if p.live]

    @property
    def potential_peers(self) -> list[tuple[bytes, bytes]]:
        return [(p.sci, p.mi) for p in self._peers.values() if not p.live]

    @property
    def latest_key(self) -> tuple[bytes, int, int] | None:
        """(key server MI, KN, AN) of the newest SAK, without the key."""
        k = self._latest
        return None if k is None else (k.ks_mi, k.kn, k.an)

    def next_event(self) -> MkaEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run (None: only after the first send)."""
        times = [p.expires for p in self._peers.values()]
        if self._next_hello is not None:
            times.append(self._next_hello)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for peer in [p for p in self._peers.values() if p.expires <= now]:
            self._drop_peer(peer)
        self._after_change()

    def frames_to_send(self, now: float) -> list[bytes]:
        """The MKPDUs due now: one at each hello time, or at once after a state change."""
        if not self._need_send and self._next_hello is not None and now < self._next_hello:
            return []
        if self.mn >= 0xFFFFFFFF:
            # The 32-bit message number is spent: continue as a new member (fresh MI).
            self.mi = self._random(kdf.MI_LEN)
            self.mn = 0
            self._sent.clear()
        self.mn += 1
        self._sent.append((now, self.mn))
        while self._sent and self._sent[0][0] < now - self.life_time:
            self._sent.popleft()
        self._need_send = False
        self._next_hello = now + self.hello_time
        self.counters.tx += 1
        return [encode_frame(self._build(), self._ick, self.sci[:6])]

    def rekey(self) -> bool:
        """Rotate the SAK now.  The key server distributes a new one (True); any other
        participant asks the key server for one by reporting exhausted PNs (False)."""
        if self.is_key_server and self._live_count():
            self._new_sak()
            return True
        self.pn_exhausting()
        return False

    def pn_exhausting(self) -> None:
        """The data plane raised a soft "pn" event for our Tx SA: get a fresh SAK."""
        if self.is_key_server and self._live_count():
            if self._latest is None or not self._latest.rekey_requested:
                if self._latest is not None:
                    self._latest.rekey_requested = True
                self._new_sak()
            return
        threshold = self.pn_exhaustion_threshold << 32 if self._xpn else self.pn_exhaustion_threshold
        self._pn_report = max(self._pn_report, threshold)
        self._need_send = True

    def receive(self, frame: bytes, now: float) -> None:
        """Process one received EAPOL frame.  Anything invalid is counted and ignored."""
        try:
            parsed = parse_frame(frame)
        except MkpduError:
            self.counters.malformed += 1
            return
        m = parsed.mkpdu
        b = m.basic
        if b.ckn != self.ckn:
            self.counters.other_ca += 1
            return
        if not verify(parsed, self._ick):
            self.counters.bad_icv += 1
            return
        if b.algorithm_agility != ALGORITHM_AGILITY:
            self.counters.unsupported += 1
            return
        if b.mi == self.mi:
            self.counters.own += 1
            return
        peer = self._peers.get(b.mi)
        if peer is not None and b.mn <= peer.mn:
            self.counters.replay += 1
            return
        self.counters.rx_ok += 1
        if peer is None:
            # A new MI from a known SCI means that peer restarted: forget the old instance.
            for old in [p for p in self._peers.values() if p.sci == b.sci]:
                self._drop_peer(old)
            peer = _Peer(b.mi, b.mn, b.sci, b.key_server_priority, now + self.life_time)
            self._peers[b.mi] = peer
            self._need_send = True
        peer.mn = b.mn
        peer.priority = b.key_server_priority
        peer.sak_use = m.sak_use
        peer.xpn = m.xpn
        if self._lists_us(m, now):
            peer.expires = now + self.life_time
            if not peer.live:
                peer.live = True
                self._events.append(PeerLive(peer.sci, peer.mi))
                self._need_send = True
        elif not peer.live:
            peer.expires = now + self.life_time
        self._elect()
        if (
            peer.live
            and self._key_server == peer.sci
            and b.key_server
            and m.distributed_sak is not None
            and m.distributed_sak.wrapped
        ):
            self._accept_sak(peer, m)
        self._after_change()

    # ------------------------------------------------------------------ internals

    def _live_count(self) -> int:
        return sum(p.live for p in self._peers.values())

    def _lists_us(self, m: Mkpdu, now: float) -> bool:
        floor = self.mn
        for t, mn in self._sent:
            if t >= now - self.life_time:
                floor = mn
                break
        for entries in (m.live_peers, m.potential_peers):
            for e in entries or ():
                if e.mi == self.mi and floor <= e.mn <= self.mn:
                    return True
        return False

    def _elect(self) -> None:
        live = [p for p in self._peers.values() if p.live]
        cands = [(p.priority, p.sci) for p in live if p.priority != NOT_KEY_SERVER]
        if live and self.priority != NOT_KEY_SERVER:
            cands.append((self.priority, self.sci))
        ks = min(cands)[1] if cands else None
        if ks != self._key_server:
            self._key_server = ks
            self._events.append(KeyServerElected(ks, ks == self.sci))
            self._need_send = True

    def _drop_peer(self, peer: _Peer) -> None:
        del self._peers[peer.mi]
        for key in (self._latest, self._old):
            if key is not None and peer.sci in key.rx:
                self._remove_rx(key, peer.sci)
        if peer.live:
            self._events.append(PeerLost(peer.sci, peer.mi))
        self._need_send = True
        self._elect()
        if not self._live_count():
            # The CA has no other member: tear down every SA we hold.
            for key in (self._old, self._latest):
                if key is not None:
                    for sci in list(key.rx):
                        self._remove_rx(key, sci)
                    if key.tx:
                        self._remove_tx(key)
            self._latest = self._old = None
            self._distributing = None

    def _sa(self, key: _Key, sci: bytes) -> MacsecSaConfig:
        if self._xpn:
            return MacsecSaConfig(self.cipher, key.sak, sci, key.an, ssci=key.sscis[sci], salt=key.salt)
        return MacsecSaConfig(self.cipher, key.sak, sci, key.an)

    def _remove_rx(self, key: _Key, sci: bytes) -> None:
        key.rx.discard(sci)
        # SAs are keyed by (AN, key), not AN alone: a newer SAK that reuses this AN (a key server
        # that lost all its peers starts over) already replaced this one; it must stay.
        # The event names the key too; the data plane ignores it when the AN holds another key.
        cur = self.installed_rx.get((sci, key.an))
        if cur is not None and cur.sak == key.sak:
            del self.installed_rx[(sci, key.an)]
        self._events.append(RemoveSa(sci, key.an, "rx", _ki(key)))

    def _remove_tx(self, key: _Key) -> None:
        key.tx = False
        if self.installed_tx is not None and self.installed_tx.sak == key.sak:  # not a newer SA on this AN
            self.installed_tx = None
        self._events.append(RemoveSa(self.sci, key.an, "tx", _ki(key)))

    def _install_key(self, ks_mi: bytes, kn: int, an: int, sak: bytes, members: dict[bytes, bytes]) -> None:
        """Make (ks_mi, kn) the latest key and install its Rx SAs.  ``members``: MI -> SCI
        of the other participants the key server gave it to."""
        if self._old is not None:
            for sci in list(self._old.rx):
                self._remove_rx(self._old, sci)
            if self._old.tx:
                self._remove_tx(self._old)
        scis = sorted({*members.values(), self.sci})
        key = _Key(
            ks_mi=ks_mi,
            kn=kn,
            an=an,
            sak=sak,
            salt=kdf.xpn_salt(ks_mi, kn) if self._xpn else None,
            sscis={s: i + 1 for i, s in enumerate(scis)},
            members=frozenset(members),
        )
        self._old, self._latest = self._latest, key
        self._pn_report = 1
        for sci in sorted(set(members.values())):
            sa = self._sa(key, sci)
            key.rx.add(sci)
            self.installed_rx[(sci, an)] = sa
            self._events.append(InstallRxSa(sa, _ki(key)))
        self._need_send = True

    def _new_sak(self) -> None:
        """Key server: derive, install and start distributing a fresh SAK."""
        self._kn += 1
        # 802.1X-2020 9.8.1: a new SAK takes the next AN.  Counted on across a teardown (all
        # peers lost): a peer that was only frozen still holds the last key under its AN.
        self._last_an = (self._last_an + 1) % 4
        an = self._last_an
        live = [p for p in self._peers.values() if p.live]
        nonce = self._random(self._sak_len)
        sak = kdf.derive_sak(self._cak, nonce, [self.mi] + [p.mi for p in live], self._kn, self._sak_len)
        suite = None if self.cipher == "gcm-aes-128" else CIPHER_SUITES[self.cipher]
        # Confidentiality Offset field: 0 = integrity only, 1 = confidentiality at offset 0.
        offset = 1 if self.confidentiality else 0
        self._distributing = DistributedSak(an, offset, self._kn, kdf.wrap_sak(self._kek, sak), suite)
        self._install_key(self.mi, self._kn, an, sak, {p.mi: p.sci for p in live})

    def _accept_sak(self, ks: _Peer, m: Mkpdu) -> None:
        d = m.distributed_sak
        assert d is not None
        for key in (self._latest, self._old):
            if key is not None and key.ks_mi == ks.mi and key.kn == d.kn:
                return  # already have it (it is repeated until everyone confirms)
        suite = CIPHER_SUITES["gcm-aes-128"] if d.cipher_suite is None else d.cipher_suite
        if CIPHER_BY_SUITE.get(suite) != self.cipher:
            self.counters.cipher_mismatch += 1
            return
        try:
            sak = kdf.unwrap_sak(self._kek, d.wrapped)
        except kdf.MkaKeyError:
            self.counters.bad_sak += 1
            return
        if len(sak) != self._sak_len:
            self.counters.bad_sak += 1
            return
        listed = [e.mi for e in m.live_peers or ()]
        if self.mi not in listed:
            return  # not (yet) a member in the key server's view; it will resend
        by_mi = {p.mi: p.sci for p in self._peers.values()}
        members = {ks.mi: ks.sci}
        for mi in listed:
            if mi == self.mi:
                continue
            if mi not in by_mi:
                return  # a member we have not heard from yet: wait for its MKPDU
            members[mi] = by_mi[mi]
        self._install_key(ks.mi, d.kn, d.an, sak, members)

    def _peer_has(self, peer: _Peer, key: _Key, flag: str) -> bool:
        s = peer.sak_use
        return bool(
            s and s.keys and s.latest_ks_mi == key.ks_mi and s.latest_kn == key.kn and getattr(s, flag)
        )

    def _after_change(self) -> None:
        """Advance the key state machine after a receive or a timer."""
        live = [p for p in self._peers.values() if p.live]
        key = self._latest
        if self.is_key_server and live:
            members = frozenset(p.mi for p in live)
            if key is None or key.ks_mi != self.mi or key.members != members or self._member_lost_key(key, live):
                self._new_sak()
            else:
                for p in live:
                    if self._peer_has(p, key, "latest_rx") and self._reported_pn(p) >= self._threshold():
                        if not key.rekey_requested:
                            key.rekey_requested = True
                            self._new_sak()
                        break
            key = self._latest
        if key is None:
            return
        if self._distributing is not None and key.ks_mi == self.mi:
            if all(self._peer_has(p, key, "latest_rx") for p in live if p.mi in key.members):
                self._distributing = None
        if not key.tx:
            if self.is_key_server and key.ks_mi == self.mi:
                ready = all(self._peer_has(p, key, "latest_rx") for p in live if p.mi in key.members)
            else:
                ks = next((p for p in live if p.sci == self._key_server and p.mi == key.ks_mi), None)
                ready = ks is not None and self._peer_has(ks, key, "latest_tx")
            if ready and live:
                sa = self._sa(key, self.sci)
                key.tx = True
                self.installed_tx = sa
                self._events.append(InstallTxSa(sa, _ki(key)))
                if self._old is not None and self._old.tx:
                    self._remove_tx(self._old)
                self._need_send = True
        old = self._old
        if old is not None and key.tx:
            by_sci = {p.sci: p for p in live}
            for sci in list(old.rx):
                holder = by_sci.get(sci)
                if holder is None or self._peer_has(holder, key, "latest_tx"):
                    self._remove_rx(old, sci)
                    self._need_send = True
            if not old.rx and not old.tx:
                self._old = None

    def _member_lost_key(self, key: _Key, live: list[_Peer]) -> bool:
        """Key server: a member confirmed our latest SAK and now reports it does not hold it (it
        dropped us while we were frozen, and came back with the same MI): distribute a new one."""
        return self._distributing is None and any(
            p.mi in key.members and not self._peer_has(p, key, "latest_rx") for p in live)

    def _threshold(self) -> int:
        return self.pn_exhaustion_threshold << 32 if self._xpn else self.pn_exhaustion_threshold

    @staticmethod
    def _reported_pn(p: _Peer) -> int:
        s = p.sak_use
        if s is None:
            return 0
        high = p.xpn.latest_lowest_pn_high if p.xpn is not None else 0
        return (high << 32) | s.latest_lowest_pn

    def _build(self) -> Mkpdu:
        live = [PeerEntry(p.mi, p.mn) for p in self._peers.values() if p.live]
        potential = [PeerEntry(p.mi, p.mn) for p in self._peers.values() if not p.live]
        basic = BasicParameterSet(
            sci=self.sci,
            mi=self.mi,
            mn=self.mn,
            ckn=self.ckn,
            key_server_priority=self.priority,
            key_server=self.is_key_server,
        )
        sak_use = xpn = None
        key, old = self._latest, self._old
        if live:
            if key is None:
                sak_use = SakUse(keys=False)
            else:
                sak_use = SakUse(
                    keys=True,
                    latest_an=key.an,
                    latest_tx=key.tx,
                    latest_rx=True,
                    old_an=old.an if old else 0,
                    old_tx=bool(old and old.tx),
                    old_rx=bool(old and old.rx),
                    latest_ks_mi=key.ks_mi,
                    latest_kn=key.kn,
                    latest_lowest_pn=self._pn_report & 0xFFFFFFFF,
                    old_ks_mi=old.ks_mi if old else bytes(kdf.MI_LEN),
                    old_kn=old.kn if old else 0,
                    old_lowest_pn=1 if old else 0,
                )
            if self._xpn:
                xpn = XpnParameterSet(0, self._pn_report >> 32 if key else 0, 0)
        ks_ssci = 0
        if self._xpn and key is not None and self.is_key_server:
            ks_ssci = key.sscis.get(self.sci, 0) & 0xFF
        return Mkpdu(
            basic=basic,
            live_peers=tuple(live) if live else None,
            potential_peers=tuple(potential) if potential else None,
            sak_use=sak_use,
            distributed_sak=self._distributing if self.is_key_server else None,
            xpn=xpn,
            key_server_ssci=ks_ssci,
        )
