"""Many IKE/Child SA lifetimes over a lossy, reordering, duplicating network with ``jitter 0`` on
both peers, so every timed IKE rekey is a simultaneous rekey (RFC 7296 section 2.8.2) and every
timed Child rekey a simultaneous Child rekey (2.8.1).  The property (issue #13, the long lossy
campaign): while the peer is reachable and the network delivers eventually, no IKE SA ever reaches
its hard lifetime -- whichever SA survives a collision rekeys again before it expires."""

from __future__ import annotations

import heapq
import os
import random
from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ipsecemu.ike import events as ev
from ipsecemu.ike import message as m
from ipsecemu.ike.consts import Exchange, Notify
from ipsecemu.ike.endpoint import IkeEndpoint
from ipsecemu.ike.states import IkeState

from support.ike_pair import events, pair


@dataclass(order=True)
class _InFlight:
    at: float
    seq: int
    data: bytes = field(compare=False)
    src: tuple[str, int] = field(compare=False)
    dst: tuple[str, int] = field(compare=False)


class LossyNet:
    """Like ``ipsecemu.ike.loopback.LoopbackNet`` but every datagram takes time: a base delay,
    some held back (reordered) behind later ones, some duplicated, some lost.  ``drop`` sees each
    datagram (decoded header fields) and may force a loss, for targeted examples."""

    def __init__(self, nodes: list[IkeEndpoint], rnd: random.Random, loss: float, dup: float = 0.05,
                 reorder: float = 0.1, delay: float = 0.005, hold: float = 0.05) -> None:
        self.nodes, self.rnd = nodes, rnd
        self.loss, self.dup, self.reorder, self.delay, self.hold = loss, dup, reorder, delay, hold
        self.now = 0.0
        self.q: list[_InFlight] = []
        self.seq = 0
        self.drop = lambda data, src, dst: False
        self.sent = 0
        self.trace: list[str] | None = None  # a line per datagram, when set

    def _note(self, what: str, data: bytes, src) -> None:
        if self.trace is not None and len(data) >= 28:
            ex, resp = _kind(data)
            name = {34: "INIT", 35: "AUTH", 36: "CCS", 37: "INFO"}.get(ex, str(ex))
            self.trace.append(f"{self.now:8.3f} {what:5} {'a' if src[0].endswith('.1') else 'b'}> {name}"
                              f"{' resp' if resp else ' req '} id={int.from_bytes(data[20:24], 'big')} "
                              f"len={len(data)} {data[:3].hex()}_{data[8:11].hex()}")

    def _collect(self) -> None:
        for node in self.nodes:
            for data, remote, local in node.datagrams_to_send(self.now):
                self.sent += 1
                if self.drop(data, local, remote) or self.rnd.random() < self.loss:
                    self._note("LOST", data, local)
                    continue
                for _ in range(2 if self.rnd.random() < self.dup else 1):
                    d = self.delay + (self.hold * self.rnd.random() if self.rnd.random() < self.reorder else 0.0)
                    self.seq += 1
                    heapq.heappush(self.q, _InFlight(self.now + d, self.seq, data, local, remote))

    def advance(self, seconds: float, step=None) -> None:
        """Run to ``now + seconds``; ``step(now)`` runs after every delivery or timer."""
        end = self.now + seconds
        self._collect()
        while True:
            times = [t for t in (n.get_timer() for n in self.nodes) if t is not None]
            t_timer = min(times) if times else None
            t_pkt = self.q[0].at if self.q else None
            t = min(x for x in (t_timer, t_pkt) if x is not None) if (t_timer or t_pkt) is not None else None
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            if t_pkt is not None and t_pkt <= self.now:
                pkt = heapq.heappop(self.q)
                self._note("recv", pkt.data, pkt.src)
                for node in self.nodes:
                    if node.local[0] == pkt.dst[0]:
                        node.receive_datagram(pkt.data, pkt.src, self.now, pkt.dst)
            else:
                for node in self.nodes:
                    nt = node.get_timer()
                    if nt is not None and nt <= self.now:
                        node.handle_timer(self.now)
            if step is not None:
                step(self.now)
            self._collect()
        self.now = end


def _kind(data: bytes) -> tuple[int, bool]:
    """(exchange type, is a response) of an IKE datagram, from its clear header."""
    return data[18], bool(data[19] & 0x20)


def run_lifetimes(seed: int, loss: float, seconds: float = 400.0, retransmit: tuple[float, float, int] = (4.0, 1.8, 5),
                  dup: float = 0.05, reorder: float = 0.1, drop_kind: str = "", drop_share: float = 0.0,
                  trace: list[str] | None = None):
    """Two gateways' cores (a initiates like the CE, re-initiating 1 s after its IKE SA is gone);
    IKE lifetime 40 s rekeyed at 20 s, Child 24 s at 12 s, DPD every 2 s, jitter 0 on both.
    An IKE SA that expires after a request on it (either side's) reached its last retransmissions
    (lost four or more times in a row) is counted in ``excused_expiries``: the peer was as good as
    unreachable, the SA ends either way.
    ``drop_kind``: additionally lose the first copy of that share of Deletes ("delete"),
    CREATE_CHILD_SA responses ("ccs_resp") or requests ("ccs_req").  Returns the endpoints' totals and a log."""
    timeout, base, tries = retransmit
    kw = dict(ike_lifetime_s=40.0, ike_rekey_fraction=0.5, child_lifetime_s=24.0, rekey_fraction=0.5,
              ike_jitter_s=0.0, child_jitter_s=0.0, dpd_delay_s=2.0, retransmit_timeout_s=timeout,
              retransmit_base=base, retransmit_tries=tries)
    a, b, _ = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16", a_kw=kw, b_kw=dict(kw))
    rnd = random.Random(seed)
    a._rng = random.Random(seed + 1).randbytes
    b._rng = random.Random(seed + 2).randbytes
    net = LossyNet([a, b], rnd, loss, dup=dup, reorder=reorder)
    drop_rnd = random.Random(seed + 3)
    seen: set[tuple] = set()

    def drop(data: bytes, src, dst) -> bool:
        if not drop_kind or len(data) < 28:
            return False
        ex, resp = _kind(data)
        want = {"delete": (Exchange.INFORMATIONAL, False), "ccs_resp": (Exchange.CREATE_CHILD_SA, True),
                "ccs_req": (Exchange.CREATE_CHILD_SA, False)}[drop_kind]
        # Deletes are the INFORMATIONAL requests bigger than a DPD's empty one
        key = (src, data[:16], data[20:24], resp)
        if (ex, resp) == want and (drop_kind != "delete" or len(data) > 60) and key not in seen:
            # the first copy only: the retransmissions then face the ordinary loss
            seen.add(key)
            return drop_rnd.random() < drop_share
        return False

    net.drop = drop
    log: list[str] = []
    state = {"gone_at": None}
    examined: set[int] = set()
    excused: list[str] = []
    stuck: dict[tuple[bytes, bytes], str] = {}

    def step(now: float) -> None:
        for ep, name in ((a, "a"), (b, "b")):
            for e in events(ep):
                log.append(f"{now:8.3f} {name} {type(e).__name__} {getattr(e, 'reason', '')} "
                           f"{e.ike_spi_i.hex()[:6]}_{e.ike_spi_r.hex()[:6]}")
        for ep in (a, b):
            for sa in ep.sas.values():
                p = sa._pending
                if p is not None and p.tries >= tries - 1:
                    stuck[(sa.spi_i, sa.spi_r)] = f"{p.kind} at try {p.tries}"
        for ep in (a, b):
            for sa in ep.sas.values():
                if sa.counters.get("ike_lifetime_expired") and id(sa) not in examined:
                    examined.add(id(sa))
                    # a request on this SA (either side's) was lost four or more times in a row and
                    # reached its last tries: the peer was as good as unreachable (at 20-30 % loss,
                    # more so with the targeted drops, this happens); the SA ends either way
                    why = stuck.get((sa.spi_i, sa.spi_r))
                    if why is not None:
                        excused.append(f"{now:8.3f} expired after a stuck request ({why})")
        live = [s for s in a.sas.values() if s.state != IkeState.CLOSED]
        if live:
            state["gone_at"] = None
        elif state["gone_at"] is None:
            state["gone_at"] = now
        elif now - state["gone_at"] >= 1.0:  # the gateway's back-off
            state["gone_at"] = None
            log.append(f"{now:8.3f} a re-initiates")
            a.initiate("c", now)

    net.trace = trace
    a.initiate("c", 0.0)
    while net.now < seconds:
        net.advance(min(0.5, seconds - net.now), step)
        step(net.now)
    totals = {k: a.counters.get(k, 0) + b.counters.get(k, 0) for k in set(a.counters) | set(b.counters)}
    totals["excused_expiries"] = len(excused)
    totals["sas_with_a_stuck_request"] = len(stuck)
    log.extend(excused)
    return totals, log, a, b, net


def _check(seed: int, loss: float, **kw) -> dict[str, int]:
    totals, log, a, b, net = run_lifetimes(seed, loss, **kw)
    expired = totals.get("sa_ike_lifetime_expired", 0) - totals["excused_expiries"]
    assert expired == 0, (f"{expired} IKE SA(s) reached the hard lifetime", totals, "\n".join(log[-80:]))
    rekeys = sum(1 for line in log if " a IkeSaRekeyed " in line)
    # the SAs did go through rekeys, not one long stall -- unless requests were lost four or more
    # times in a row or a whole retransmission schedule ran out (at 20-30 % loss now and then: the
    # SA closes on "timeout" and a starts afresh)
    gave_up = any(f"IkeSaDeleted {why} " in line for line in log for why in ("timeout", "dpd"))
    assert rekeys >= 3 or gave_up or totals["sas_with_a_stuck_request"], (rekeys, totals)
    return totals


# IKE_REKEY_EXAMPLES=2000 for a long local search (the checked-in default stays fast)
@settings(max_examples=int(os.environ.get("IKE_REKEY_EXAMPLES", "25")), deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.1, 0.2, 0.3]),
       retransmit=st.sampled_from([(4.0, 1.8, 5), (1.0, 1.0, 12)]),
       drop=st.sampled_from([("", 0.0), ("delete", 0.5), ("ccs_resp", 0.5), ("ccs_req", 0.3)]))
# each of these made an IKE SA reach its hard lifetime before the fix (issue #13; 65 of 150 drawn runs
# with the 4 s x 1.8 schedule did, none with 1 s x 1):
# a's DPD stuck in retransmissions past the rekey time; a refused b's IKE rekey (TEMPORARY_FAILURE)
@example(seed=1, loss=0.1, retransmit=(4.0, 1.8, 5), drop=("", 0.0))
# b's IKE_AUTH answer lost for 100 s: b (established) rekeyed, a (still AUTH_SENT) answered
# INVALID_SYNTAX: the rekey refused outright, b's SA expired
@example(seed=954850945, loss=0.3, retransmit=(4.0, 1.8, 5), drop=("", 0.0))
@example(seed=1661501010, loss=0.1, retransmit=(4.0, 1.8, 5), drop=("", 0.0))
@example(seed=468349022, loss=0.1, retransmit=(4.0, 1.8, 5), drop=("", 0.0))
@example(seed=1132981883, loss=0.2, retransmit=(4.0, 1.8, 5), drop=("", 0.0))
@example(seed=365466111, loss=0.1, retransmit=(4.0, 1.8, 5), drop=("ccs_resp", 0.5))
@example(seed=103726226, loss=0.3, retransmit=(4.0, 1.8, 5), drop=("ccs_resp", 0.5))
@example(seed=2872800510, loss=0.1, retransmit=(4.0, 1.8, 5), drop=("delete", 0.5))
@example(seed=1843573563, loss=0.2, retransmit=(4.0, 1.8, 5), drop=("ccs_req", 0.3))
# excused: a's Delete of a Child SA lost six times in a row (its last try) kept refusing b's IKE
# rekeys past b's deferral cap; a's own SA would have timed out soon after anyway
@example(seed=51692, loss=0.2, retransmit=(4.0, 1.8, 5), drop=("delete", 0.5))
def test_surviving_ike_sa_always_rekeys_before_its_hard_lifetime(seed: int, loss: float, retransmit, drop) -> None:
    _check(seed, loss, retransmit=retransmit, drop_kind=drop[0], drop_share=drop[1])


# --- the mechanisms one by one (instant in-memory network, targeted losses) ---------------------------

SHORT = dict(ike_lifetime_s=40.0, ike_rekey_fraction=0.5, ike_jitter_s=0.0, child_lifetime_s=0.0)


def _established(a_kw: dict | None = None, b_kw: dict | None = None):
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16", a_kw=a_kw, b_kw=b_kw)
    sa = a.initiate("c", 0.0)
    net.run()
    assert sa.state == IkeState.ESTABLISHED
    events(a), events(b)
    return a, b, net, sa, b.find(sa.spi_r)


def _is(p, src, exchange: int, response: bool, spi: bytes | None = None) -> bool:
    return p.src == src and _kind(p.data) == (exchange, response) and (spi is None or p.data[:8] == spi)


def test_peer_rekey_is_accepted_while_our_dpd_is_stuck() -> None:
    """A DPD of ours in retransmission is no reason to refuse the peer's IKE rekey (before the fix:
    TEMPORARY_FAILURE for as long as the DPD was stuck, past the SA's hard lifetime).  The old SA's
    DPD then runs out quietly: "rekeyed", no Child SA lost."""
    a, b, net, sa, sb = _established()
    old = sa.spi_i
    net.filter = lambda p: not _is(p, sa.local, Exchange.INFORMATIONAL, False, old) and \
        not _is(p, sb.local, Exchange.INFORMATIONAL, False, old)  # a's DPD, and b's Delete of the old SA
    sa.dpd(net.now)
    net.run()
    assert sa._pending is not None and sa._pending.kind == "dpd"
    sb.rekey_ike(net.now)
    net.run()
    assert sa.successor is not None and sb.successor is not None
    assert "rekey_retry" not in sb.counters
    net.advance(300.0)
    assert sa.state == sb.state == IkeState.CLOSED
    ea, eb = events(a), events(b)
    assert [e.reason for e in ea if isinstance(e, ev.IkeSaDeleted)] == ["rekeyed"]
    assert not [e for e in ea + eb if isinstance(e, ev.ChildSaDeleted)]
    (x,), (y,) = a.sas.values(), b.sas.values()
    assert x.keys == y.keys and len(x.children) == len(y.children) == 1


def test_resent_rekey_request_dates_the_new_sa_from_the_answer_that_got_through() -> None:
    """Our answer to the peer's IKE rekey is lost: the peer makes its new SA only when a
    retransmission is answered.  Ours must not be older than the peer's (before the fix it was,
    by the retransmission interval: its rekeys came early and met a peer not yet due)."""
    a, b, net, sa, sb = _established(a_kw=SHORT, b_kw=SHORT)
    lost = []

    def first_answer_lost(p) -> bool:
        if _is(p, sb.local, Exchange.CREATE_CHILD_SA, True) and not lost:
            lost.append(p)
            return False
        return True

    net.filter = first_answer_lost
    net.advance(1.0)
    sa.rekey_ike(net.now)
    net.run()
    assert sb.successor is not None and sa.successor is None
    net.advance(5.0)  # a retransmits at 5 s
    x, y = sa.successor, sb.successor
    assert x is not None and y is not None and x.keys == y.keys
    assert sb.counters.get("rekey_answer_resent") == 1
    assert abs(x._ike_rekey_at - y._ike_rekey_at) < 0.01 and abs(x._ike_expire_at - y._ike_expire_at) < 0.01


def test_hard_lifetime_waits_for_a_rekey_held_up_by_our_own_stuck_exchange() -> None:
    """Our DPD is stuck in retransmissions across the rekey time and the hard lifetime (window
    size 1: the rekey cannot start).  When it is answered the SA is rekeyed, not deleted as
    expired (before the fix: deleted at once, the tunnel went down)."""
    a, b, net, sa, sb = _established(a_kw=SHORT, b_kw=dict(SHORT, ike_lifetime_s=10000.0))
    dropped = []

    def three_dpds_lost(p) -> bool:
        if _is(p, sa.local, Exchange.INFORMATIONAL, False) and len(dropped) < 3:
            dropped.append(p)
            return False
        return True

    net.advance(19.0)
    net.filter = three_dpds_lost
    sa.dpd(net.now)  # sent at 19, 23, 30.2 (lost) and 43.2 (answered): past 20 and 40
    net.advance(30.0)
    assert sa.counters.get("ike_expiry_deferred") == 1 and "ike_lifetime_expired" not in sa.counters
    assert sa.successor is not None and sa.successor.state == IkeState.ESTABLISHED
    assert [e.reason for e in events(a) if isinstance(e, ev.IkeSaDeleted)] == ["rekeyed"]


def test_hard_lifetime_is_deferred_for_a_busy_peer_only_so_long() -> None:
    """A peer that answers every IKE rekey with TEMPORARY_FAILURE (busy) defers our hard
    lifetime by at most one retransmission schedule (4 s x 1.8, 5 tries: 165.5 s)."""
    a, b, net, sa, sb = _established(a_kw=SHORT, b_kw=dict(SHORT, ike_lifetime_s=10000.0))
    sb._recv_rekey_ike = lambda msg, addr, local, now: sb._send_response(
        msg, [m.Notification(Notify.TEMPORARY_FAILURE)], addr, local)
    net.advance(200.0)
    assert sa.state == IkeState.ESTABLISHED and sa.counters.get("ike_expiry_deferred", 0) >= 1
    net.advance(10.0)
    assert sa.state == IkeState.CLOSED and sa.counters.get("ike_lifetime_expired") == 1


def test_lost_ike_auth_answer_busy_not_refused_and_dated_from_the_resend() -> None:
    """The responder is established, its IKE_AUTH answer lost: its CREATE_CHILD_SA meets an
    initiator still in AUTH_SENT, which answers TEMPORARY_FAILURE (before the fix INVALID_SYNTAX:
    an IKE rekey refused outright, the SA then expired).  The retransmitted IKE_AUTH dates the
    responder's IKE SA and first Child SA from then, as the initiator dates its own."""
    kw = dict(SHORT, child_lifetime_s=24.0, rekey_fraction=0.5, child_jitter_s=0.0)
    a, b, net = pair("aes128gcm16-prfsha256-ecp256", "aes128gcm16", a_kw=kw, b_kw=dict(kw))
    lost = []

    def two_auth_answers_lost(p) -> bool:
        if p.src == b.local and _kind(p.data) == (Exchange.IKE_AUTH, True) and len(lost) < 2:
            lost.append(p)
            return False
        return True

    net.filter = two_auth_answers_lost
    sa = a.initiate("c", 0.0)
    net.run()
    sb = next(iter(b.sas.values()))
    assert sb.state == IkeState.ESTABLISHED and sa.state == IkeState.AUTH_SENT
    net.advance(1.0)
    sb.rekey_ike(net.now)
    net.run()
    assert sb.counters.get("rekey_retry") == 1 and "rekey_failed" not in sb.counters
    net.advance(10.5)  # a's IKE_AUTH again at 4 s (answer lost) and 11.2 s (answered)
    assert sa.state == IkeState.ESTABLISHED and sb.counters.get("auth_answer_resent") == 2
    assert sb.successor is None and abs(sb._ike_expire_at - sa._ike_expire_at) < 0.01
    (ca,), (cb,) = sa.children.values(), sb.children.values()
    assert abs(ca.expire_at - cb.expire_at) < 0.01
    assert not [e for e in events(b) if isinstance(e, ev.ChildSaFailed | ev.IkeSaRekeyFailed)]


def test_due_ike_rekey_goes_before_a_due_child_rekey_which_then_runs_on_the_new_sa() -> None:
    """Both due at once: the IKE rekey first (before the fix the Child rekey went first, and under
    loss 12 s Child rekeys kept the IKE rekey waiting); the Child SA moves to the new IKE SA and
    is rekeyed there at once."""
    kw = dict(ike_lifetime_s=24.0, ike_rekey_fraction=0.5, ike_jitter_s=0.0, child_lifetime_s=24.0,
              rekey_fraction=0.5, child_jitter_s=0.0)
    a, b, net, sa, sb = _established(a_kw=kw, b_kw=dict(kw, ike_lifetime_s=10000.0, child_lifetime_s=10000.0))
    net.advance(12.5)
    evs = [e for e in events(a) if isinstance(e, ev.IkeSaRekeyed | ev.ChildSaRekeyed)]
    assert [type(e) for e in evs] == [ev.IkeSaRekeyed, ev.ChildSaRekeyed], evs
    new = sa.successor
    assert new is not None and (evs[1].ike_spi_i, evs[1].ike_spi_r) == (new.spi_i, new.spi_r)
    assert len(new.children) == 1 and next(iter(new.children.values())).keys == evs[1].keys


def test_resent_child_request_dates_the_child_sa_from_the_answer_that_got_through() -> None:
    """As for the IKE SA: our answer to the peer's CREATE_CHILD_SA is lost, the peer installs the
    Child SA at its retransmission; ours must not run out (or be rekeyed) earlier than the peer's."""
    kw = dict(ike_lifetime_s=0.0, child_lifetime_s=24.0, rekey_fraction=0.5, child_jitter_s=0.0)
    a, b, net, sa, sb = _established(a_kw=kw, b_kw=dict(kw))
    lost = []

    def first_answer_lost(p) -> bool:
        if _is(p, sa.local, Exchange.CREATE_CHILD_SA, True) and not lost:
            lost.append(p)
            return False
        return True

    net.filter = first_answer_lost
    net.advance(1.0)
    sb.rekey_child(next(iter(sb.children)), net.now)
    net.advance(5.0)  # b retransmits at 5 s
    assert sa.counters.get("child_answer_resent") == 1
    new_a = [c for c in sa.children.values() if not c.rekeyed]
    new_b = [c for c in sb.children.values() if not c.rekeyed]
    assert len(new_a) == len(new_b) == 1 and new_a[0].outbound_spi == new_b[0].inbound_spi
    assert abs(new_a[0].expire_at - new_b[0].expire_at) < 0.01 and abs(new_a[0].rekey_at - new_b[0].rekey_at) < 0.01
