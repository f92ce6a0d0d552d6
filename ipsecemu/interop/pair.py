"""ipsecemu <-> strongSwan interop: one ipsecemu peer and one charon on a pair topology, and one
case run on it (the matrix of ``ipsecemu interop`` is :mod:`ipsecemu.interop.matrix`).

Left gateway: :class:`~ipsecemu.io.peer.IkePeer` (IKE core + asyncio transport + tun forwarder).
Right gateway: :class:`~ipsecemu.strongswan.charon.Charon` with kernel-libipsec.  Inside hosts
behind each.  A case passes when both sides show the same SA (IKE SPIs, ESP SPIs, algorithms),
the keys we derived equal the ones charon logged, and pings pass both ways through our ESP and
charon's libipsec.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ipsecemu.base.errors import CheckFailed
from ipsecemu.ike import events as ev
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.io.peer import IkePeer
from ipsecemu.lab.harness import PairTopology, pair_conn, pair_topology
from ipsecemu.lab.netns import aping
from ipsecemu.net.proc import wait_for
from ipsecemu.strongswan.charon import Charon
from ipsecemu.strongswan.keylog import CHARON_ENCR, CHARON_INTEG

__all__ = ["DEFAULT_CASES", "PSK", "CaseResult", "Interop", "InteropMismatch", "ours_vs_charon", "run_case"]

PSK = "ipsecemu-interop-psk"
#: IKE proposal -> ESP proposal (the interop matrix of the README)
DEFAULT_CASES: dict[str, str] = {
    "aes256-sha256-modp1024": "aes256-sha256",
    "aes256-sha256-modp2048": "aes256-sha256",
    "aes128-sha1-modp2048": "aes128-sha1",
    "aes256gcm16-prfsha384-ecp384": "aes256gcm16",
    "aes128gcm16-prfsha256-ecp256": "aes128gcm16",
    "aes256-sha384-x25519": "aes256-sha384",
}


class InteropMismatch(CheckFailed):
    """Both sides disagree about the SA (the message says on what)."""


class Interop:
    """The two sides of one running case plus helpers that never block the event loop."""

    def __init__(self, topo: PairTopology, charon: Charon, peer: Any) -> None:
        self.topo, self.charon, self.peer = topo, charon, peer

    async def charon_call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """vici calls that wait for an exchange must not block our loop (we answer the exchange)."""
        return await asyncio.to_thread(fn, *args, **kw)

    async def until(self, pred: Callable[[], object], timeout: float = 8.0) -> bool:
        return await asyncio.to_thread(wait_for, pred, timeout, 0.05)

    def charon_sa(self) -> dict[str, Any]:
        return self.charon.list_sas().get("pair", {})

    def charon_child(self) -> dict[str, Any]:
        children = [c for c in self.charon_sa().get("child-sas", {}).values() if c.get("state") == "INSTALLED"]
        return children[-1] if children else {}

    async def pings(self, count: int = 2) -> tuple[int, int]:
        """Left host -> right host (1000-byte payload), then right -> left; replies received."""
        a = await aping(self.topo.hosts[0], self.topo.inside[1], count, 1000)
        b = await aping(self.topo.hosts[1], self.topo.inside[0], count, 56)
        return a, b

    async def establish(self, we_initiate: bool, timeout: float = 10.0) -> tuple[Any, Any]:
        """Bring the IKE SA + first CHILD_SA up (we or charon initiate); returns our
        ``IkeSaEstablished`` and ``ChildSaEstablished`` events once charon shows it INSTALLED."""
        t = self.peer.transport
        if we_initiate:
            self.peer.initiate("pair")
        else:
            await self.charon_call(self.charon.initiate, child="net", ike="pair", timeout_ms=int(timeout * 1000))
        ike_ev = await t.wait_event(lambda e: isinstance(e, ev.IkeSaEstablished | ev.IkeSaDeleted), timeout)
        if isinstance(ike_ev, ev.IkeSaDeleted):
            raise InteropMismatch(f"IKE SA failed: {ike_ev.reason} (notify {ike_ev.notify})")
        child_ev = await t.wait_event(lambda e: isinstance(e, ev.ChildSaEstablished | ev.ChildSaFailed
                                                           | ev.IkeSaDeleted), timeout)
        if not isinstance(child_ev, ev.ChildSaEstablished):
            raise InteropMismatch(f"CHILD_SA failed: {child_ev}")
        if not await self.until(lambda: bool(self.charon_child()), timeout):
            raise InteropMismatch(f"charon shows no INSTALLED CHILD_SA:\n{self.charon.log_tail()}")
        return ike_ev, child_ev

    def check_same_sa(self, ike_ev: Any, child_ev: Any) -> None:
        """vici view == our view: states, IKE and ESP SPIs, algorithms, key sizes, encapsulation."""
        sa, child = self.charon_sa(), self.charon_child()
        keys = child_ev.keys
        salt = 4 if keys.inbound.encr.startswith(("aes-gcm", "chacha")) else 0
        checks = {
            "state": (sa.get("state"), child.get("state")) == ("ESTABLISHED", "INSTALLED"),
            "IKE SPIs": (sa.get("initiator-spi"), sa.get("responder-spi"))
            == (ike_ev.ike_spi_i.hex(), ike_ev.ike_spi_r.hex()),
            "ESP SPIs": (int(child["spi-in"], 16), int(child["spi-out"], 16)) == (keys.outbound.spi, keys.inbound.spi),
            "ESP encryption": CHARON_ENCR.get(child.get("encr-alg", "")) == keys.inbound.encr,
            "ESP integrity": CHARON_INTEG.get(child.get("integ-alg", "")) == keys.inbound.integ,
            "ESP key size": int(child.get("encr-keysize", 0)) == (len(keys.inbound.enc_key) - salt) * 8,
            "UDP encapsulation": child.get("encap") == "yes" and keys.encap,
            "identities": (sa.get("remote-id"), sa.get("local-id")) == ("left", "right"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InteropMismatch(f"charon and ipsecemu disagree on {', '.join(bad)}")

    def check_same_keys(self, child_ev: Any) -> None:
        """Byte for byte: our SK_* and ESP keys are the ones charon logged (needs key_log)."""
        keylog = self.charon.keys()
        ours = self.peer.sa().keys
        rows = [r for r in keylog.ike if "spi_i" in r]
        if not rows:
            raise InteropMismatch("no IKE keys in charon's log (key_log=True?)")
        theirs = rows[-1]
        bad = [n for n in ("sk_d", "sk_ei", "sk_er", "sk_ai", "sk_ar", "sk_pi", "sk_pr")
               if getattr(ours, n).hex() != theirs.get(n, "")]
        inbound, outbound, _child = self.charon.esp_sa_configs()[-1]
        o, i = child_ev.keys.outbound, child_ev.keys.inbound
        # charon's inbound SA is our outbound one and vice versa
        if (inbound.spi, inbound.enc_key, inbound.integ_key) != (o.spi, o.enc_key, o.integ_key):
            bad.append("ESP keys ipsecemu->charon")
        if (outbound.spi, outbound.enc_key, outbound.integ_key) != (i.spi, i.enc_key, i.integ_key):
            bad.append("ESP keys charon->ipsecemu")
        if bad:
            raise InteropMismatch(f"derived keys differ from charon's: {', '.join(bad)}")


@contextlib.asynccontextmanager
async def ours_vs_charon(prefix: str, ike: str, esp: str, *, charon_kw: dict[str, Any] | None = None,
                         ours_kw: dict[str, Any] | None = None, ipv6: bool = False, key_log: bool = False,
                         backend: str = "auto") -> AsyncIterator[Interop]:
    """Pair topology ``prefix`` with ipsecemu on the left and charon on the right, both loaded
    with connection "pair" (IDs left/right, PSK, ``ike``/``esp`` proposals); nothing initiated.
    ``ours_kw`` overrides ``IkeSaConfig.simple`` arguments (``psk``, ``ike``, ``esp``, timers...),
    ``charon_kw`` :class:`~ipsecemu.strongswan.conn.Conn` fields.  Everything is torn down on exit."""
    with pair_topology(prefix, ipv6=ipv6) as topo:
        charon = Charon(topo.gateways[1], retransmit_timeout=1.0, retransmit_tries=2, key_log=key_log)
        try:
            await asyncio.to_thread(charon.start)
            charon.load(pair_conn(topo, 1, ike_proposal=ike, esp_proposal=esp, psk=PSK, **(charon_kw or {})))
            kw: dict[str, Any] = {"retransmit_timeout_s": 1.0, "retransmit_tries": 3, "ike": ike, "esp": esp,
                                  "psk": PSK, **(ours_kw or {})}
            psk = kw.pop("psk")
            cfg = IkeSaConfig.simple("pair", psk, "left", "right", local_ts=topo.subnets[0],
                                     remote_ts=topo.subnets[1], remote_addr=(topo.outer[1], 500), **kw)
            peer = IkePeer([cfg], topo.outer[0], netns=topo.gateways[0], tun_name=prefix + "t", backend=backend)
            await peer.start()
            try:
                yield Interop(topo, charon, peer)
            finally:
                peer.close()
        finally:
            await asyncio.to_thread(charon.cleanup)


# --------------------------------------------------------------------------- one case
@dataclass
class CaseResult:
    ike: str
    esp: str
    initiator: str  # "ipsecemu" | "charon"
    ok: bool
    detail: str = ""
    setup_ms: float = 0.0
    pings: tuple[int, int] = (0, 0)


async def run_case(ike: str, esp: str, we_initiate: bool, *, prefix: str | None = None, pings: int = 3,
                   backend: str = "auto", ipv6: bool = False) -> CaseResult:
    """One interop case; failures become a :class:`CaseResult` with ``ok=False``, never raise."""
    prefix = prefix or "i" + uuid.uuid4().hex[:6]
    res = CaseResult(ike, esp, "ipsecemu" if we_initiate else "charon", False)
    try:
        async with ours_vs_charon(prefix, ike, esp, key_log=True, backend=backend, ipv6=ipv6) as s:
            t0 = time.perf_counter()
            ike_ev, child_ev = await s.establish(we_initiate)
            res.setup_ms = (time.perf_counter() - t0) * 1000
            s.check_same_sa(ike_ev, child_ev)
            s.check_same_keys(child_ev)
            res.pings = await s.pings(pings)
            if res.pings != (pings, pings):
                raise InteropMismatch(f"pings {res.pings[0]}/{pings} left->right, {res.pings[1]}/{pings} "
                                      f"right->left; forwarder {dict(s.peer.forwarder.counters)}")
            res.ok = True
    except (InteropMismatch, TimeoutError) as exc:
        res.detail = str(exc) or type(exc).__name__
    except Exception as exc:  # report, keep going with the other cases
        res.detail = f"{type(exc).__name__}: {exc}"
    return res
