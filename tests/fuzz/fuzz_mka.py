"""Atheris target: the MKPDU decoder and the MKA participant (IEEE 802.1X-2020).

Byte 0 selects: even -> the bytes are an Ethernet frame for ``parse_frame`` (documented outcome:
a ParsedFrame or ``MkpduError``) and then for participant P1's ``receive``; odd -> the bytes are
the parameter sets (everything after the Basic Parameter Set) of an MKPDU from peer P2, signed
with the real ICK, so the fuzzer reaches the participant's logic behind the ICV (live/potential
peer lists, SAK use, distributed SAK, XPN).  P1 and P2 start from a converged, keyed state
(byte 1 bit 0: GCM-AES-128 or GCM-AES-XPN-256) and exchange a few more MKPDUs and timer ticks.
Finding: any exception out of ``receive`` / ``frames_to_send`` / ``handle_timer``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import atheris_main, seeded  # noqa: E402

from ipsecemu.macsec.mka import kdf  # noqa: E402
from ipsecemu.macsec.mka.mkpdu import MkpduError, parse_frame  # noqa: E402
from ipsecemu.macsec.mka.participant import MkaParticipant  # noqa: E402

CAK128 = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
CAK256 = bytes(range(32))
CKN = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
CIPHERS = ("gcm-aes-128", "gcm-aes-xpn-256")


class Pair:
    def __init__(self, cipher: str) -> None:
        cak = CAK256 if cipher.endswith("256") else CAK128
        self.ick = kdf.derive_ick(cak, CKN)
        self.p = [MkaParticipant(cak, CKN, bytes([2, 0, 0, 0, 0, i, 0, 1]), 0x10 + i, cipher, True,
                                 random=seeded(i)) for i in (1, 2)]
        self.now = 0.0

    def step(self, dt: float = 0.5) -> None:
        self.now += dt
        for p in self.p:
            t = p.get_timer()
            if t is not None and t <= self.now:
                p.handle_timer(self.now)
        out = [(i, f) for i, p in enumerate(self.p) for f in p.frames_to_send(self.now)]
        for i, f in out:
            self.p[1 - i].receive(f, self.now)
        for p in self.p:
            while p.next_event() is not None:
                pass


_START: dict[int, Pair] = {}


def start(which: int) -> Pair:
    """Two participants after convergence and SAK installation (computed once per process)."""
    if which not in _START:
        pair = Pair(CIPHERS[which])
        for _ in range(12):
            pair.step()
        _START[which] = pair
    return _START[which]


def signed_from_p2(pair: Pair, sets: bytes) -> bytes:
    """P2's next real MKPDU with its parameter sets replaced by ``sets``, signed with the ICK."""
    frame = pair.p[1].frames_to_send(pair.now + 100.0)[0]
    blen = ((frame[20] & 0x0F) << 8) | frame[21]
    head = frame[: 22 + blen + (-blen % 4)]
    body_len = len(head) - 18 + len(sets) + 16
    signed = head[:16] + body_len.to_bytes(2, "big") + head[18:] + sets
    return signed + kdf.aes_cmac(pair.ick, signed)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    if len(data) < 2:
        return
    body = data[2:]
    if not data[0] & 1:
        try:
            parse_frame(body)
        except MkpduError:
            pass
    pair = copy.deepcopy(start(data[1] & 1))
    frame = signed_from_p2(pair, body) if data[0] & 1 else body
    pair.p[0].receive(frame, pair.now)
    for _ in range(4):
        pair.step(1.0)


def main() -> None:
    atheris_main(TestOneInput)


if __name__ == "__main__":
    main()
