"""Atheris target: two ``IkeEndpoint``s (initiator A, responder B) run a scripted life --
IKE_SA_INIT, IKE_AUTH, Child rekey (CREATE_CHILD_SA), DPD (INFORMATIONAL), a Child SA created
by the responder, its deletion, an IKE rekey -- and one datagram in transit is replaced by the
fuzz input.  Keys and nonces come from seeded ``rng``s, so the run is the same every time up to
the replaced datagram; in "inner" mode the input becomes the *plaintext* of that message and is
encrypted with the sender's real SK keys, so the fuzzer reaches the payloads behind SK.

Input layout: byte 0 = suite (bit 0), mode (bit 1: inner), byte 1 = index of the datagram to
replace (mod the script length), byte 2 = first inner payload type (inner mode); the rest is the
datagram (raw mode) or the inner payload chain (inner mode).

Finding: any exception out of the endpoints' driving calls, or anything the endpoint's
last-resort guard caught (``last_internal_error``): peers' errors must end as counted drops.
"""

from __future__ import annotations

import copy
import ipaddress
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main, seeded  # noqa: E402

from ipsecemu.base.satypes import EspSaConfig  # noqa: E402
from ipsecemu.ike import message as m  # noqa: E402
from ipsecemu.ike.crypto import SkCipher  # noqa: E402
from ipsecemu.ike.endpoint import IkeEndpoint  # noqa: E402
from ipsecemu.ike.events import ChildSaKeys  # noqa: E402
from ipsecemu.ike.proposals import Proposal, Transform  # noqa: E402
from ipsecemu.ike.settings import Identity, IkeSaConfig  # noqa: E402
from ipsecemu.ike.states import IkeState  # noqa: E402
from ipsecemu.ike.ts import TrafficSelector  # noqa: E402

A, B = ("192.0.2.1", 500), ("192.0.2.2", 500)
SUITES = [
    ("aes128-sha256-x25519", "aes128-sha256-x25519"),  # classic cipher + HMAC, PFS in CREATE_CHILD_SA
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-esn-noesn"),  # AEAD, ESN offered
]
MAX_DELIVER = 40  # datagrams per run (bounds the work of any input)

# one scripted action per step, by the role that acts (names: the IkeSa API)
STEPS = ("initiate", "rekey_child", "dpd", "create_child", "delete_child", "rekey_ike", "delete")
ACTOR = {"initiate": "a", "rekey_child": "a", "dpd": "a", "create_child": "b", "delete_child": "b",
         "rekey_ike": "a", "delete": "b"}
AFTER_FUZZ = 8  # deliveries after the replaced datagram (bounded work: the interesting part is near it)


def endpoints(suite: int) -> tuple[IkeEndpoint, IkeEndpoint]:
    ike, esp = SUITES[suite % len(SUITES)]
    common = dict(ike=ike, esp=esp, fragmentation=True)
    a = IkeEndpoint([IkeSaConfig.simple("c", "s3cret", "left.example", "right.example", local_ts="10.1.0.0/16",
                                        remote_ts="10.2.0.0/16", remote_addr=B, **common)], A, rng=seeded(1))
    b = IkeEndpoint([IkeSaConfig.simple("c", "s3cret", "right.example", "left.example", local_ts="10.2.0.0/16",
                                        remote_ts="10.1.0.0/16", **common)], B, rng=seeded(2))
    return a, b


class Script:
    """The scripted life as a resumable machine: ``queue`` holds datagrams in transit, ``pc`` the
    next step.  ``snapshots`` (when recording) are deep copies taken before each delivery, so a
    fuzz input restarts right at the datagram it replaces instead of replaying the handshake."""

    def __init__(self, suite: int) -> None:
        self.a, self.b = endpoints(suite)
        self.now = 0.0
        self.pc = 0
        self.n = 0  # datagrams delivered
        self.budget = MAX_DELIVER
        self.timer_rounds = 0
        self.max_timer_rounds = 2
        self.steps_left = len(STEPS)
        self.queue: list[tuple[bytes, str]] = []  # (data, sender "a" | "b")
        self.log: list[tuple[bytes, str]] = []

    def ep(self, who: str) -> IkeEndpoint:
        return self.a if who == "a" else self.b

    def established(self, ep: IkeEndpoint):  # noqa: ANN201 - IkeSa | None
        return next((sa for sa in ep.sas.values() if sa.state == IkeState.ESTABLISHED and not sa._redundant
                     and sa._pending is None), None)

    def _collect(self) -> None:
        for who in ("a", "b"):
            self.queue += [(d, who) for d, _r, _l in self.ep(who).datagrams_to_send(self.now)]

    def _step(self, name: str) -> None:
        self.now += 1.0
        if name == "initiate":
            self.a.initiate("c", self.now)
            return
        sa = self.established(self.ep(ACTOR[name]))
        if sa is None:
            return
        if name in ("rekey_child", "delete_child"):
            if sa.children:
                getattr(sa, name)(next(iter(sa.children)), self.now)
        else:
            getattr(sa, name)(self.now)

    def deliver(self, data: bytes, who: str) -> None:
        self.n += 1
        self.budget -= 1
        self.ep("b" if who == "a" else "a").receive_datagram(data, self.ep(who).local, self.now)

    def run(self, snapshots: list | None = None, stop_at: int | None = None) -> None:
        """Run to the end (or up to delivery ``stop_at``, leaving it queued)."""
        while True:
            self._collect()
            if self.queue and self.budget > 0:
                if stop_at is not None and self.n == stop_at:
                    return
                if snapshots is not None:
                    snapshots.append(snapshot(self))
                data, who = self.queue.pop(0)
                self.log.append((data, who))
                self.deliver(data, who)
                continue
            self.queue.clear()
            if self.pc < len(STEPS) and self.budget > 0 and self.steps_left > 0:
                self._step(STEPS[self.pc])
                self.pc += 1
                self.steps_left -= 1
                continue
            # retransmissions and timeouts of whatever a replaced datagram left hanging
            times = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not times or self.timer_rounds >= self.max_timer_rounds:
                break
            self.timer_rounds += 1
            self.budget = max(self.budget, 4)
            self.now = max(self.now, min(times))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
        for ep in (self.a, self.b):
            while ep.next_event() is not None:
                pass
            if ep.last_internal_error is not None:
                raise ep.last_internal_error


def _share_crypto_types(obj: object, seen: set[int] | None = None) -> None:
    """Let ``copy.deepcopy`` share the ``cryptography`` objects (AEAD contexts, private keys) a
    state holds: they cannot be copied, and the cores use them without mutating them."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return
    seen.add(id(obj))
    cls = type(obj)
    if cls.__module__.startswith("cryptography"):
        copy._deepcopy_dispatch[cls] = lambda x, _memo: x  # type: ignore[attr-defined]
        return
    if isinstance(obj, dict):
        items = list(obj.values()) + list(obj.keys())
    elif isinstance(obj, list | tuple | set | frozenset) or cls.__name__ == "deque":
        items = list(obj)  # type: ignore[call-overload]
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, n) for n in getattr(cls, "__slots__", ()) if hasattr(obj, n)]
    for item in items:
        _share_crypto_types(item, seen)


def _share(*classes: type) -> None:
    for cls in classes:
        copy._deepcopy_dispatch[cls] = lambda x, _memo: x  # type: ignore[attr-defined]


# configuration and frozen records the cores never mutate: shared, so a snapshot copies only state
_share(IkeSaConfig, Proposal, Transform, TrafficSelector, Identity, ipaddress.IPv4Address,
       ipaddress.IPv6Address, ChildSaKeys, EspSaConfig, SkCipher)  # SkCipher: stateless after __init__


def snapshot(sc: Script) -> Script:
    try:
        return copy.deepcopy(sc)
    except TypeError:
        _share_crypto_types(sc)
        return copy.deepcopy(sc)


_SNAPSHOTS: dict[int, list[Script]] = {}


def snapshots(suite: int) -> list[Script]:
    """States before each delivery of the undisturbed script (computed once per process)."""
    if suite not in _SNAPSHOTS:
        snaps: list[Script] = []
        Script(suite).run(snaps)
        _SNAPSHOTS[suite] = snaps
    return _SNAPSHOTS[suite]


def sender_cipher(data: bytes, sender: IkeEndpoint):  # noqa: ANN201 - SkCipher | None
    """The SK cipher ``sender`` used for datagram ``data`` (None for IKE_SA_INIT)."""
    if len(data) < m.HEADER_LEN:
        return None
    spi = data[0:8] if data[19] & 0x08 else data[8:16]  # I flag: sent by the original initiator
    sa = sender.sas.get(spi)
    return getattr(sa, "_cout", None) if sa is not None else None


def encrypt_inner(data: bytes, first: int, inner: bytes, cipher) -> bytes:  # noqa: ANN001
    """``data``'s header with an SK payload carrying ``inner`` (any bytes) under ``cipher``."""
    _pad, body_len = cipher.body_len(len(inner))
    sk_len = 4 + body_len
    hdr = bytearray(data[: m.HEADER_LEN])
    hdr[16] = m.Payload.SK
    struct.pack_into("!I", hdr, 24, m.HEADER_LEN + sk_len)
    assoc = bytes(hdr) + struct.pack("!BBH", first, 0, sk_len)
    return assoc + cipher.seal(assoc, inner, bytes(cipher.encr.iv_len))


def inner_of(data: bytes, receiver: IkeEndpoint) -> tuple[int, bytes] | None:
    """(first inner payload type, plaintext) of an SK message ``receiver`` can open (corpus seeds)."""
    try:
        msg = m.decode_message(data)
    except m.ParseError:
        return None
    if not msg.payloads or not isinstance(msg.payloads[-1], m.SK):
        return None
    spi = msg.spi_r if msg.initiator else msg.spi_i
    sa = receiver.sas.get(spi)
    if sa is None or sa._cin is None:
        return None
    sk = msg.payloads[-1]
    return sk.first_inner, sa._cin.open(data[: len(data) - len(sk.data)], sk.data)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if len(data) < 3:
        return
    suite, inner, first, body = data[0] & 1, bool(data[0] & 2), data[2], data[3:]
    snaps = snapshots(suite)
    sc = snapshot(snaps[data[1] % len(snaps)])
    wire, who = sc.queue.pop(0)
    if inner:
        cipher = sender_cipher(wire, sc.ep(who))
        wire = encrypt_inner(wire, first, body, cipher) if cipher is not None else body
    else:
        wire = body
    sc.log.append((wire, who))
    sc.deliver(wire, who)
    sc.budget, sc.steps_left, sc.max_timer_rounds = AFTER_FUZZ, 1, 1
    sc.run()


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
