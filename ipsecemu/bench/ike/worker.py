"""The worker side of ``ipsecemu bench ike``: one process inside a netns (``python -m
ipsecemu.bench.ike``), an ipsecemu IKE initiator or responder on real UDP 500/4500, spoken to in JSON
lines over stdin/stdout (``{"ready"}``, ``go``, one result per group; ``report`` to the responder).
Child SAs go into the data plane as they come up and leave with their IKE SA, as charon installs
them into libipsec."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import sys
from typing import Any

from ipsecemu.bench.ike.report import ADDR, ESP, GROUPS, NETS, PSK, SETTLE_S, ike_proposal
from ipsecemu.dataplane import backend
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.events import ChildSaDeleted, ChildSaEstablished, ChildSaFailed, IkeSaDeleted
from ipsecemu.ike.settings import IkeSaConfig
from ipsecemu.io.transport import IkeTransport

__all__ = ["Sad", "worker_main"]


def _configs(role: str, groups: list[str], remote: str) -> list[Any]:
    common: dict[str, Any] = {"esp": ESP, "initial_contact": False, "retransmit_timeout_s": 2.0,
                              "retransmit_tries": 3, "half_open_timeout_s": 10.0}
    if role == "responder":
        # one config accepting every group: the initiator offers exactly one
        return [IkeSaConfig.simple("bench", PSK, "right", "left", ike=",".join(ike_proposal(g) for g in GROUPS),
                                   local_ts=NETS[1], remote_ts=NETS[0], **common)]
    # INITIAL_CONTACT off: it would make the responder drop our other in-flight SAs (RFC 7296 2.4)
    return [IkeSaConfig.simple(f"bench-{g}", PSK, "left", "right", ike=ike_proposal(g), local_ts=NETS[0],
                               remote_ts=NETS[1], remote_addr=(remote, 500), **common) for g in groups]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Sad:
    """Child SAs go into the data plane as they come up (inbound SAD + an outbound SA each) and
    leave with their IKE SA, as charon installs them into libipsec: a setup includes that."""

    def __init__(self) -> None:
        self.dp = backend("auto")
        self.table = self.dp.EspInboundTable()
        self.outbound: dict[int, Any] = {}  # inbound SPI -> EspOutbound
        self.by_ike: dict[bytes, list[int]] = {}  # IKE initiator SPI -> inbound SPIs
        self.installed = 0

    def on_event(self, ev: object) -> None:
        if isinstance(ev, ChildSaEstablished):
            spi = ev.keys.inbound.spi
            self.table.add(ev.keys.inbound)
            self.outbound[spi] = self.dp.EspOutbound(ev.keys.outbound)
            self.by_ike.setdefault(ev.ike_spi_i, []).append(spi)
            self.installed += 1
        elif isinstance(ev, ChildSaDeleted):
            self._remove(ev.inbound_spi)
            spis = self.by_ike.get(ev.ike_spi_i, [])
            if ev.inbound_spi in spis:
                spis.remove(ev.inbound_spi)
        elif isinstance(ev, IkeSaDeleted):
            for spi in self.by_ike.pop(ev.ike_spi_i, []):
                self._remove(spi)

    def _remove(self, spi: int) -> None:
        if self.outbound.pop(spi, None) is not None:
            self.table.remove(spi)

    def __len__(self) -> int:
        return len(self.outbound)


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _responder(host: str) -> None:
    established: list[str] = []
    sad = Sad()

    def on_event(ev: object) -> None:
        sad.on_event(ev)
        if isinstance(ev, ChildSaEstablished):
            established.append(ev.ike_spi_i.hex())

    # cookies off in practice, as charon's raised cookie_threshold: K half-open SAs are expected
    ep = IkeEndpoint(_configs("responder", list(GROUPS), ""), (host, 500), cookie_threshold=1 << 30)
    tr = IkeTransport(ep, [host], on_event=on_event)
    await tr.start()
    try:
        reader = await _stdin_reader()
        _emit({"ready": True})
        while True:
            line = await reader.readline()
            if not line:
                break  # parent gone or done
            if line.strip() == b"report":
                # report and forget, so the list never grows across groups
                _emit({"established": established[:], "sas": len(ep.sas), "counters": ep.counters,
                       "installed": sad.installed, "sad": len(sad)})
                sad.installed = 0
                established.clear()
            while not tr.events.empty():
                tr.events.get_nowait()
    finally:
        tr.close()


async def _initiate_group(ep: Any, tr: Any, sad: Sad, name: str, duration: float | None, count: int | None,
                          k: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started: dict[bytes, float] = {}
    lat: dict[str, float] = {}
    state = {"launched": 0, "failed": 0, "last": 0.0}
    done = asyncio.Event()
    t0 = loop.time()
    deadline = t0 + duration if duration is not None else None

    def want_more(now: float) -> bool:
        if count is not None:
            return state["launched"] < count
        return deadline is not None and now < deadline

    def refill(now: float) -> None:
        while len(started) < k and want_more(now):
            sa = ep.initiate(name, now)
            started[sa.spi_i] = now
            state["launched"] += 1
        if not started and not want_more(now):
            done.set()

    def on_event(ev: object) -> None:
        sad.on_event(ev)
        now = loop.time()
        spi = getattr(ev, "ike_spi_i", b"")
        if spi not in started:
            return
        if isinstance(ev, ChildSaEstablished):
            lat[spi.hex()] = now - started.pop(spi)
            state["last"] = now
            sa = ep.find(spi)
            if sa is not None:
                sa.delete(now)  # INFORMATIONAL delete: state stays bounded
        elif isinstance(ev, (IkeSaDeleted, ChildSaFailed)):
            started.pop(spi)
            state["failed"] += 1
            sa = ep.find(spi)
            if sa is not None:
                sa.delete(now)
        else:
            return
        refill(now)

    tr.on_event = on_event
    refill(t0)
    tr.pump()
    limit = (duration or 0) + SETTLE_S if count is None else SETTLE_S + count * 0.5
    try:
        await asyncio.wait_for(done.wait(), limit)
    except TimeoutError:
        state["failed"] += len(started)
    for spi in list(started):  # give up on stragglers, quietly
        sa = ep.find(spi)
        if sa is not None:
            sa.delete(loop.time())
    tr.pump()
    # wait for the last deletes so the next group starts from zero state
    for _ in range(100):
        if not ep.sas:
            break
        await asyncio.sleep(0.02)
    tr.on_event = sad.on_event
    while not tr.events.empty():
        tr.events.get_nowait()
    installed, sad.installed = sad.installed, 0
    return {"latencies": lat, "seconds": (state["last"] or loop.time()) - t0, "failed": state["failed"],
            "leftover": len(ep.sas), "installed": installed, "sad": len(sad)}


async def _initiator(host: str, remote: str, groups: list[str], duration: float | None, count: int | None,
                     k: int) -> None:
    ep = IkeEndpoint(_configs("initiator", groups, remote), (host, 500))
    sad = Sad()
    tr = IkeTransport(ep, [host], on_event=sad.on_event)
    await tr.start()
    try:
        reader = await _stdin_reader()
        _emit({"ready": True})
        for group in groups:
            line = await reader.readline()  # "go": the parent starts the clock for everyone
            if not line:
                return
            res = await _initiate_group(ep, tr, sad, f"bench-{group}", duration, count, k)
            _emit({"group": group, **res})
    finally:
        tr.close()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a worker never outlives the bench (e.g. after SIGKILL of the parent)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def worker_main(argv: list[str]) -> int:
    """Entry point of ``python -m ipsecemu.bench.ike`` (internal: started by the bench)."""
    ap = argparse.ArgumentParser(prog="ipsecemu.bench.ike")
    ap.add_argument("role", choices=["initiator", "responder"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--remote", default=ADDR[1])
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--duration", type=float)
    ap.add_argument("--count", type=int)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if a.role == "responder":
            asyncio.run(_responder(a.host))
        else:
            asyncio.run(_initiator(a.host, a.remote, a.groups.split(","), a.duration, a.count, a.concurrency))
    except KeyboardInterrupt:
        return 130
    return 0

