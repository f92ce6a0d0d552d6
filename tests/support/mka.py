"""MKA participants on an in-memory LAN, and checks that they protect traffic."""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from ipsecemu.base.satypes import MacsecSaConfig, Verdict
from ipsecemu.dataplane import backend
from ipsecemu.macsec.mka import (
    InstallRxSa,
    InstallTxSa,
    MkaParticipant,
    RemoveSa,
)

DP = backend("reference")


CAK256 = bytes(range(32))
CAK = bytes.fromhex("000102030405060708090a0b0c0d0e0f")


CKN = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")


CIPHERS = ["gcm-aes-128", "gcm-aes-256", "gcm-aes-xpn-128", "gcm-aes-xpn-256"]


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = _random.Random(seed)
    return lambda n: rng.randbytes(n)


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, i])


class Node:
    """One participant plus the reference data plane it drives."""

    def __init__(self, p: MkaParticipant) -> None:
        self.p = p
        self.secy = p.secy_config()
        self.rx = DP.MacsecRx(self.secy)
        self.tx: object | None = None
        self.tx_sa: MacsecSaConfig | None = None
        self.events: list[object] = []
        self.rx_ki: dict[tuple[bytes, int], bytes] = {}
        self.tx_ki = b""
        self.silent = False

    def drain(self) -> None:
        while (e := self.p.next_event()) is not None:
            self.events.append(e)
            # like the link daemon: SAs keyed by (AN, key identifier)
            if isinstance(e, InstallRxSa):
                if (e.sa.sci, e.sa.an) in self.rx_ki:
                    self.rx.remove_sa(e.sa.sci, e.sa.an)  # a new key under a reused AN replaces it
                self.rx.add_sa(e.sa)
                self.rx_ki[(e.sa.sci, e.sa.an)] = e.ki
            elif isinstance(e, InstallTxSa):
                self.tx, self.tx_sa, self.tx_ki = DP.MacsecTx(self.secy, e.sa), e.sa, e.ki
            elif isinstance(e, RemoveSa):
                if e.direction == "rx":
                    if self.rx_ki.get((e.sci, e.an)) == e.ki:  # else: a newer key took the AN
                        del self.rx_ki[(e.sci, e.an)]
                        self.rx.remove_sa(e.sci, e.an)
                elif self.tx_sa is not None and self.tx_sa.an == e.an and self.tx_ki == e.ki:
                    self.tx, self.tx_sa = None, None

    def protect(self, dst: bytes, payload: bytes) -> bytes:
        assert self.tx is not None, "no Tx SA installed"
        frame = dst + self.p.sci[:6] + b"\x08\x00" + payload
        verdict, out = self.tx.protect(frame)  # type: ignore[attr-defined]
        assert verdict == Verdict.OK
        return out


def make(
    n: int,
    cipher: str = "gcm-aes-128",
    include_sci: bool = True,
    prios: list[int] | None = None,
    cak: bytes | None = None,
    **kw: object,
) -> list[Node]:
    if cak is None:
        cak = CAK256 if cipher.endswith("256") else CAK
    prios = prios or [0x10] * n
    return [
        Node(
            MkaParticipant(
                cak, CKN, mac(i + 1) + b"\x00\x01", prios[i], cipher, include_sci, random=seeded(i + 1), **kw
            )
        )
        for i in range(n)
    ]


class Lan:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.now = 0.0
        self.log: list[tuple[float, int, bytes]] = []

    def step(self, dt: float = 0.1) -> None:
        for n in self.nodes:
            t = n.p.get_timer()
            if t is not None and t <= self.now:
                n.p.handle_timer(self.now)
        out = [(i, f) for i, n in enumerate(self.nodes) if not n.silent for f in n.p.frames_to_send(self.now)]
        for i, f in out:
            self.log.append((self.now, i, f))
            for j, n in enumerate(self.nodes):
                if j != i and not n.silent:
                    n.p.receive(f, self.now)
        for n in self.nodes:
            n.drain()
        self.now = round(self.now + dt, 6)

    def run(self, seconds: float, dt: float = 0.1) -> None:
        for _ in range(int(round(seconds / dt))):
            self.step(dt)


def assert_traffic(a: Node, b: Node, payload: bytes = b"hello over macsec") -> None:
    frame = a.protect(mac(9), payload)
    res = b.rx.validate(frame)
    assert res.verdict == Verdict.OK, res
    assert res.frame[14:] == payload and res.sci == a.p.sci


def converged(nodes: list[Node]) -> None:
    keys = {n.p.latest_key for n in nodes}
    assert len(keys) == 1 and None not in keys
    for n in nodes:
        assert n.tx_sa is not None and n.p.installed_tx == n.tx_sa
        for m in nodes:
            if m is not n:
                assert n.p.installed_rx[(m.p.sci, m.tx_sa.an)] == m.tx_sa  # type: ignore[union-attr]
