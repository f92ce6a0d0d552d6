"""One ``ipsecemu bench ike`` run: two netns joined by a veth, then ``rounds`` alternating rounds of
the three pairs (ipsecemu <-> ipsecemu, ipsecemu -> charon, charon -> charon), every group each, all
processes of a round stopped before the next; summarised by :func:`~ipsecemu.bench.ike.report.summarise`."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.ike.driver import UpdownListener, Worker, charon_conf, sigterm_as_interrupt, vici_run
from ipsecemu.bench.ike.report import (
    ADDR,
    ESP,
    GROUPS,
    NETS,
    PAIRS,
    PSK,
    SETTLE_S,
    Progress,
    Result,
    Run,
    ike_proposal,
    make_result,
    summarise,
)
from ipsecemu.bench.rounds import DEFAULT_ROUNDS, check_rounds
from ipsecemu.lab.netns import Netns
from ipsecemu.strongswan.charon import Charon, charon_available
from ipsecemu.strongswan.conn import Child, Conn

__all__ = ["run"]


@dataclass
class _Round:
    """What one round runs and has started (stopped by :meth:`stop`, also on errors)."""

    ns: tuple[str, str]  # initiator side A, responder side B
    groups: list[str]
    duration: float | None
    count: int | None
    concurrency: int
    progress: Progress
    checks: dict[str, Any]
    tag: str  # " (round r/N)"
    results: list[Result] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    charons: list[Charon] = field(default_factory=list)
    listeners: list[UpdownListener] = field(default_factory=list)

    @property
    def read_timeout(self) -> float:
        return (self.duration or 0) + SETTLE_S + (self.count or 0) * 0.5 + 10

    def timing(self) -> list[str]:
        return ["--concurrency", str(self.concurrency),
                *(["--count", str(self.count)] if self.count is not None else ["--duration", str(self.duration)])]

    def worker(self, ns: str, args: list[str]) -> Worker:
        w = Worker(ns, args)
        self.workers.append(w)
        self.checks["pids"].append(w.pid)
        return w

    def initiator(self) -> Worker:
        return self.worker(self.ns[0], ["initiator", "--host", ADDR[0], "--remote", ADDR[1], "--groups",
                                        ",".join(self.groups), *self.timing()])

    def charon(self, ns: str) -> Charon:
        c = Charon(ns, extra_conf=charon_conf(self.concurrency), retransmit_timeout=2.0)
        self.charons.append(c)
        c.start()
        self.checks["pids"].append(c.pid)
        self.progress(f"charon pid {c.pid} up in {ns}{self.tag}")
        return c

    def record(self, pair: str, group: str, run_: Run, confirmed: set[str]) -> None:
        res, unconfirmed = make_result(pair, group, run_, confirmed)
        self.results.append(res)
        extra = f", {unconfirmed} not confirmed by the responder" if unconfirmed else ""
        extra += f", {run_.failed} failed" if run_.failed else ""
        self.progress(f"{pair} {group}: {res.setups} setups in {res.seconds:.2f}s = {res.rate:.0f}/s, "
                      f"p50 {res.p50_ms:.1f} ms, p95 {res.p95_ms:.1f} ms{extra}{self.tag}")

    def initiator_out(self, init: Worker) -> dict[str, Any]:
        init.send("go")
        out = init.read(self.read_timeout)
        self.checks.setdefault("ipsecemu_initiator", []).append({k: v for k, v in out.items() if k != "latencies"})
        return out

    def stop(self) -> None:
        for lis in self.listeners:
            lis.stop()
        for w in self.workers:
            w.stop()
        for c in self.charons:
            c.cleanup()
        self.listeners.clear()
        self.workers.clear()
        self.charons.clear()


def _ipsecemu_pair(r: _Round) -> None:
    a, b = r.ns
    r.progress(f"ipsecemu <-> ipsecemu: starting two worker processes{r.tag}")
    resp = r.worker(b, ["responder", "--host", ADDR[1]])
    init = r.initiator()
    resp.read(20)
    init.read(20)
    r.progress(f"ipsecemu workers up: responder pid {resp.pid} in {b}, initiator pid {init.pid} in {a}{r.tag}")
    for group in r.groups:
        out = r.initiator_out(init)
        resp.send("report")
        rep = resp.read(10)
        r.checks.setdefault("ipsecemu_responder", []).append(rep)
        r.record(PAIRS[0], group, Run(out["latencies"], out["seconds"], out["failed"]), set(rep["established"]))
    for w in (init, resp):
        w.stop()
    r.workers.clear()


def _ipsecemu_to_charon(r: _Round) -> UpdownListener:
    a, b = r.ns
    r.progress(f"ipsecemu -> strongSwan: starting charon (responder){r.tag}")
    cb = r.charon(b)
    cb.load(Conn(name="bench", local_addrs=(ADDR[1],), remote_addrs=(ADDR[0],), local_id="right",
                 remote_id="left", psk=PSK, proposals=tuple(ike_proposal(g) for g in GROUPS),
                 children=(Child(local_ts=(NETS[1],), remote_ts=(NETS[0],), esp_proposals=(ESP,)),)))
    lb = UpdownListener(cb).start()
    r.listeners.append(lb)
    init = r.initiator()
    init.read(20)
    r.progress(f"ipsecemu initiator pid {init.pid} up in {a}{r.tag}")
    for group in r.groups:
        out = r.initiator_out(init)
        lb.settle(len(out["latencies"]))
        confirmed, _ = lb.snapshot()
        r.record(PAIRS[1], group, Run(out["latencies"], out["seconds"], out["failed"]), confirmed)
    init.stop()
    r.workers.clear()
    return lb


def _charon_pair(r: _Round, lb: UpdownListener) -> None:
    """charon -> charon; the responder is the charon of :func:`_ipsecemu_to_charon`, listened to by ``lb``."""
    a = r.ns[0]
    r.progress(f"strongSwan -> strongSwan: starting charon (initiator){r.tag}")
    ca = r.charon(a)
    for group in r.groups:
        ca.load(Conn(name=f"bench-{group}", local_addrs=(ADDR[0],), remote_addrs=(ADDR[1],),
                     local_id="left", remote_id="right", psk=PSK, proposals=(ike_proposal(group),),
                     children=(Child(local_ts=(NETS[0],), remote_ts=(NETS[1],), esp_proposals=(ESP,)),)))
    la = UpdownListener(ca).start()
    r.listeners.append(la)
    for group in r.groups:
        r.progress(f"strongSwan -> strongSwan {group}: {r.concurrency} vici initiates in flight{r.tag}")
        run_, by_uid = vici_run(ca, f"bench-{group}", r.duration, r.count, r.concurrency)
        la.settle(len(by_uid))
        lb.settle(len(by_uid))
        _, uid_spi = la.snapshot()
        confirmed, _ = lb.snapshot()
        run_.latencies = {uid_spi.get(uid, f"?{uid}"): v for uid, v in by_uid.items()}
        r.record(PAIRS[2], group, run_, confirmed)
    r.checks["charon_responder_samples"] = lb.samples
    r.checks["charon_initiator_samples"] = la.samples


def run(*, groups: list[str], duration: float | None, count: int | None, concurrency: int,
        progress: Progress, checks: dict[str, Any] | None = None, rounds: int = DEFAULT_ROUNDS) -> list[Result]:
    """Build the lab, measure every pair x group in ``rounds`` alternating rounds, tear everything
    down.  ``checks`` (if given) receives evidence for tests: vici event samples and responder counters."""
    check_rounds(rounds)
    if os.geteuid() != 0:
        raise BenchError("bench ike needs root (it creates network namespaces)")
    reason = charon_available()
    if reason:
        raise BenchError(reason)
    checks = checks if checks is not None else {}
    checks.update(netns=[], pids=[])
    prefix = "bi" + uuid.uuid4().hex[:5]
    per_round: list[list[Result]] = []
    with sigterm_as_interrupt(), Netns() as lab:
        a, b = lab.add(prefix + "A"), lab.add(prefix + "B")
        checks["netns"] += [a, b]
        lab.veth(a, prefix + "a", b, prefix + "b", (ADDR[0] + "/24",), (ADDR[1] + "/24",))
        # the inside subnets live on lo: libipsec routes need a local source address in the TS
        lab.addrs(a, "lo", NETS[0].replace(".0/", ".1/"))
        lab.addrs(b, "lo", NETS[1].replace(".0/", ".1/"))
        for rnd in range(1, rounds + 1):
            r = _Round((a, b), groups, duration, count, concurrency, progress, checks,
                       f" (round {rnd}/{rounds})" if rounds > 1 else "")
            try:
                _ipsecemu_pair(r)
                _charon_pair(r, _ipsecemu_to_charon(r))
            finally:
                r.stop()
            per_round.append(r.results)
    return summarise(per_round)
