"""Two sans-I/O IKE endpoints wired back to back, and helpers to read their events."""

from __future__ import annotations

import random

from ipsecemu.base.satypes import Verdict
from ipsecemu.dataplane import backend
from ipsecemu.ike import events as ev
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.loopback import LoopbackNet, Nat
from ipsecemu.ike.settings import IkeSaConfig

A, B = ("192.0.2.1", 500), ("192.0.2.2", 500)


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def pair(ike: str = "aes256-sha256-modp2048", esp: str = "aes256gcm16", *, a_kw: dict | None = None,
         b_kw: dict | None = None, ids: tuple[str, str] = ("left.example", "right.example"),
         nat: Nat | None = None, **ep_kw: object) -> tuple[IkeEndpoint, IkeEndpoint, LoopbackNet]:
    ca = dict(ike=ike, esp=esp, local_ts="10.1.0.0/16", remote_ts="10.2.0.0/16", remote_addr=B)
    cb = dict(ike=ike, esp=esp, local_ts="10.2.0.0/16", remote_ts="10.1.0.0/16")
    ca.update(a_kw or {})
    cb.update(b_kw or {})
    psk_a = ca.pop("psk", "s3cret")
    psk_b = cb.pop("psk", "s3cret")
    a = IkeEndpoint([IkeSaConfig.simple("c", psk_a, ids[0], ids[1], **ca)], A, rng=seeded(1))
    b = IkeEndpoint([IkeSaConfig.simple("c", psk_b, ids[1], ids[0], **cb)], B, rng=seeded(2), **ep_kw)
    return a, b, LoopbackNet([a, b], nat=nat)


def events(ep: IkeEndpoint) -> list[ev.Event]:
    out = []
    while (e := ep.next_event()) is not None:
        out.append(e)
    return out


def one(evs: list, cls: type):
    found = [e for e in evs if isinstance(e, cls)]
    assert len(found) == 1, evs
    return found[0]


def esp_both_ways(ka: ev.ChildSaKeys, kb: ev.ChildSaKeys) -> None:
    """a's outbound must open with b's inbound and vice versa, through the reference ESP."""
    be = backend("reference")
    for out_cfg, in_cfg in ((ka.outbound, kb.inbound), (kb.outbound, ka.inbound)):
        assert out_cfg.spi == in_cfg.spi
        payload = b"E" * 20 + bytes(range(50))
        verdict, pkt = be.EspOutbound(out_cfg).encap(payload, 4)
        assert verdict == Verdict.OK
        res = be.EspInbound(in_cfg).decap(pkt)
        assert res.verdict == Verdict.OK and res.payload == payload
