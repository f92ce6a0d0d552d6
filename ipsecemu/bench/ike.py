"""``ipsecemu bench ike``: IKE_SA + Child SA setups per second and latency, three pairs, one run.

Pairs (PSK, IKE ``aes128gcm16-prfsha256-<group>``, ESP ``aes128gcm16``, tunnel mode):

* ``ipsecemu-ipsecemu``: two worker processes (this module run with ``python -m``) inside two
  netns joined by a veth, real UDP 500/4500 through the kernel;
* ``ipsecemu-strongswan``: our initiator worker -> charon (kernel-libipsec) as responder;
* ``strongswan-strongswan``: charon -> charon, driven over vici (K threads each blocking in
  ``initiate``), tuned for rate as notes/strongswan-netns.md says.

Each setup is a complete IKE_SA_INIT + IKE_AUTH carrying a Child SA; its latency runs from the
initiate call to the initiator seeing the Child SA up.  K setups are kept in flight; each IKE SA
is deleted (INFORMATIONAL) right after it came up, so state stays bounded.  A setup counts only
if the responder reported the same IKE SA (by initiator SPI) established with its Child SA too:
the ipsecemu responder reports its ``ChildSaEstablished`` events, charon its vici ``child-updown``
events.  Both peers and the driver share this machine's cores, so every rate includes the DH and
IKE work of both sides.  Our Child SAs go into the data plane (native inbound SAD + outbound SA)
and out again with their IKE SA, as charon installs them into libipsec.

The worker processes each own one core's worth of Python, the same way each charon is its own
process; they talk JSON lines over stdin/stdout (``{"ready"}``, ``go``, one result per group).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import click

GROUPS = ("ecp256", "modp2048")
PAIRS = ("ipsecemu-ipsecemu", "ipsecemu-strongswan", "strongswan-strongswan")
PSK = "ipsecemu-bench-psk-0123456789"  # lab-only secret, never a real one
ESP = "aes128gcm16"
ADDR = ("192.0.2.1", "192.0.2.2")  # initiator side A, responder side B (RFC 5737)
NETS = ("10.1.0.0/24", "10.2.0.0/24")  # traffic selectors; gateways hold .1 on lo
DEFAULT_DURATION, QUICK_DURATION = 6.0, 1.0
SETTLE_S = 10.0  # how long in-flight setups may take after the window closes
Progress = Callable[[str], None]


def ike_proposal(group: str) -> str:
    return f"aes128gcm16-prfsha256-{group}"


@dataclass
class Result:
    pair: str
    group: str
    setups: int
    seconds: float
    rate: float
    p50_ms: float
    p95_ms: float
    ratio_to_strongswan: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Run:
    """What one (pair, group) measurement produced before verification."""

    latencies: dict[str, float]  # initiator SPI (hex) -> seconds
    seconds: float
    failed: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def make_result(pair: str, group: str, run: Run, confirmed: set[str]) -> tuple[Result, int]:
    """Only setups the responder confirmed count; returns the result and how many did not."""
    lat = [v for spi, v in run.latencies.items() if spi in confirmed]
    seconds = run.seconds if run.seconds > 0 else 1e-9
    res = Result(pair, group, len(lat), round(run.seconds, 3), round(len(lat) / seconds, 1),
                 round(percentile(lat, 50) * 1000, 2), round(percentile(lat, 95) * 1000, 2))
    return res, len(run.latencies) - len(lat)


# =============================================================== worker side (inside a netns)
def _configs(role: str, groups: list[str], remote: str) -> list[Any]:
    from ipsecemu.ike.settings import IkeSaConfig

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
        from ipsecemu.dataplane import backend

        self.dp = backend("auto")
        self.table = self.dp.EspInboundTable()
        self.outbound: dict[int, Any] = {}  # inbound SPI -> EspOutbound
        self.by_ike: dict[bytes, list[int]] = {}  # IKE initiator SPI -> inbound SPIs
        self.installed = 0

    def on_event(self, ev: object) -> None:
        from ipsecemu.ike.events import ChildSaDeleted, ChildSaEstablished, IkeSaDeleted

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
    from ipsecemu.ike.endpoint import IkeEndpoint
    from ipsecemu.ike.events import ChildSaEstablished
    from ipsecemu.io.transport import IkeTransport

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
    from ipsecemu.ike.events import ChildSaEstablished, ChildSaFailed, IkeSaDeleted

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
    from ipsecemu.ike.endpoint import IkeEndpoint
    from ipsecemu.io.transport import IkeTransport

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
        import ctypes

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


# =============================================================== parent side
class BenchError(RuntimeError):
    """The benchmark could not run (message says why)."""


class Worker:
    """One worker process in a netns, spoken to in JSON lines; stopped by its PID."""

    def __init__(self, ns: str, args: list[str]) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "ipsecemu.bench.ike", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
            start_new_session=True)  # Ctrl-C reaches only us; we stop the worker ourselves

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise BenchError(f"worker {self.proc.args[5:]} gave no answer within {timeout:.0f}s:\n{self.stderr_tail()}")
        return json.loads(box[0])

    def stderr_tail(self, n: int = 15) -> str:
        self.err.seek(0)
        return "\n".join(self.err.read().decode(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                if proc.stdin:
                    proc.stdin.close()  # the polite way: EOF ends an idle worker
                proc.wait(0.5)
            except (subprocess.TimeoutExpired, OSError):
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(3)
                except ProcessLookupError:
                    pass
        for f in (proc.stdout, proc.stdin):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        self.err.close()


class UpdownListener:
    """Initiator SPIs of every CHILD_SA charon reports up (vici ``child-updown``), plus the
    charon unique id -> SPI map (to match vici initiates with SPIs)."""

    def __init__(self, charon: Any) -> None:
        self.charon = charon
        self.spis: set[str] = set()
        self.by_uid: dict[str, str] = {}
        self.samples: list[dict[str, Any]] = []  # a few full event bodies, for tests
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> UpdownListener:
        self._thread.start()
        if not self._ready.wait(5):
            raise BenchError(f"vici event listener in {self.charon.ns} did not register")
        return self

    def _run(self) -> None:
        try:
            s = self.charon.session(timeout=5)
            for label, ev in s.listen(["child-updown"], timeout=0.1):
                self._ready.set()
                if self._stop.is_set():
                    break
                if label is None or ev.get("up") != b"yes":
                    continue
                for name, sa in ev.items():
                    if name == "up" or not isinstance(sa, dict):
                        continue
                    spi = sa.get("initiator-spi", b"").decode()
                    with self._lock:
                        self.spis.add(spi)
                        self.by_uid[sa.get("uniqueid", b"").decode()] = spi
                        if len(self.samples) < 3:
                            self.samples.append({"name": name, "state": sa.get("state", b"").decode(),
                                                 "initiator-spi": spi,
                                                 "child-states": [c.get("state", b"").decode()
                                                                  for c in sa.get("child-sas", {}).values()]})
        except Exception:  # noqa: BLE001 - charon stopped under us: the listener just ends
            pass
        finally:
            self._ready.set()

    def snapshot(self) -> tuple[set[str], dict[str, str]]:
        with self._lock:
            out = set(self.spis), dict(self.by_uid)
            self.spis.clear()
            self.by_uid.clear()
            return out

    def settle(self, expect: int, timeout: float = 2.0) -> None:
        """Wait until ``expect`` events arrived (they trail the initiator by a little)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.spis) >= expect:
                    return
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def vici_run(charon: Any, conn: str, duration: float | None, count: int | None, k: int) -> tuple[Run, dict[str, float]]:
    """K threads, each: blocking vici ``initiate`` of child ``net`` of ``conn``, then an
    asynchronous ``terminate`` of that IKE SA.  Returns the run keyed by charon unique id."""
    import vici.exception

    lock = threading.Lock()
    state = {"launched": 0, "failed": 0, "last": 0.0}
    by_uid: dict[str, float] = {}
    t0 = time.monotonic()
    deadline = t0 + duration if duration is not None else None
    errors: list[str] = []

    def claim() -> bool:
        with lock:
            if count is not None:
                ok = state["launched"] < count
            else:
                ok = time.monotonic() < (deadline or 0)
            if ok:
                state["launched"] += 1
            return ok

    def loop() -> None:
        try:
            s = charon.session(timeout=30)
        except OSError as exc:
            errors.append(str(exc))
            return
        try:
            while claim():
                start = time.monotonic()
                uid = ""
                try:
                    for log in s.initiate({"child": "net", "ike": conn, "timeout": "8000", "init-limits": "no",
                                           "loglevel": "0"}):
                        uid = uid or log.get("ikesa-uniqueid", b"").decode()
                    end = time.monotonic()
                    with lock:
                        by_uid[uid] = end - start
                        state["last"] = max(state["last"], end)
                except vici.exception.CommandException:
                    with lock:
                        state["failed"] += 1
                if uid:
                    # timeout -1: don't wait for the DELETE exchange (the next initiate goes out now)
                    for _ in s.terminate({"ike-id": uid, "timeout": "-1"}):
                        pass
        except Exception as exc:  # noqa: BLE001 - reported below; a dead charon ends the run
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                s.transport.socket.close()
            except OSError:
                pass

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(k)]
    for t in threads:
        t.start()
    limit = time.monotonic() + (duration or 0) + SETTLE_S + (count or 0) * 0.5
    for t in threads:
        t.join(max(0.0, limit - time.monotonic()))
    if errors and not by_uid:
        raise BenchError(f"vici initiate failed: {errors[0]}\n{charon.log_tail()}")
    return Run({}, (state["last"] or time.monotonic()) - t0, state["failed"]), by_uid


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every finally (workers, charons, netns) runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    me = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != me:  # a child forked by a library (pyroute2 netns): die as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _charon_conf(k: int) -> str:
    # a vici initiate blocks a worker thread: threads >= concurrent initiates + 16 (notes)
    # log level 0: errors and one line per SA, as a busy gateway would run (not the harness's 1)
    lvl = 0
    return (f"charon {{\n  threads = {max(24, k + 24)}\n"
            f"  filelog {{\n    main {{\n      default = {lvl}\n      ike = {lvl}\n      chd = {lvl}\n    }}\n  }}\n}}\n")


def run(*, groups: list[str], duration: float | None, count: int | None, concurrency: int,
        progress: Progress, checks: dict[str, Any] | None = None) -> list[Result]:
    """Build the lab, measure every pair x group, tear everything down.  ``checks`` (if given)
    receives evidence for tests: vici event samples and responder counters."""
    from ipsecemu.lab.netns import Netns
    from ipsecemu.lab.strongswan import Charon, Child, Conn, charon_available

    if os.geteuid() != 0:
        raise BenchError("bench ike needs root (it creates network namespaces)")
    reason = charon_available()
    if reason:
        raise BenchError(reason)
    checks = checks if checks is not None else {}
    checks.update(netns=[], pids=[])
    prefix = "bi" + uuid.uuid4().hex[:5]
    results: list[Result] = []
    workers: list[Worker] = []
    charons: list[Any] = []
    listeners: list[UpdownListener] = []
    timing = ["--concurrency", str(concurrency),
              *(["--count", str(count)] if count is not None else ["--duration", str(duration)])]

    def record(pair: str, group: str, run_: Run, confirmed: set[str]) -> None:
        res, unconfirmed = make_result(pair, group, run_, confirmed)
        results.append(res)
        extra = f", {unconfirmed} not confirmed by the responder" if unconfirmed else ""
        extra += f", {run_.failed} failed" if run_.failed else ""
        progress(f"{pair} {group}: {res.setups} setups in {res.seconds:.2f}s = {res.rate:.0f}/s, "
                 f"p50 {res.p50_ms:.1f} ms, p95 {res.p95_ms:.1f} ms{extra}")

    with _sigterm_as_interrupt(), Netns() as lab:
        try:
            a, b = lab.add(prefix + "A"), lab.add(prefix + "B")
            checks["netns"] += [a, b]
            lab.veth(a, prefix + "a", b, prefix + "b", (ADDR[0] + "/24",), (ADDR[1] + "/24",))
            # the inside subnets live on lo: libipsec routes need a local source address in the TS
            lab.addrs(a, "lo", NETS[0].replace(".0/", ".1/"))
            lab.addrs(b, "lo", NETS[1].replace(".0/", ".1/"))

            # -- 1. ipsecemu <-> ipsecemu
            progress("ipsecemu <-> ipsecemu: starting two worker processes")
            resp = Worker(b, ["responder", "--host", ADDR[1]])
            workers.append(resp)
            checks["pids"].append(resp.pid)
            init = Worker(a, ["initiator", "--host", ADDR[0], "--remote", ADDR[1], "--groups", ",".join(groups),
                              *timing])
            workers.append(init)
            checks["pids"].append(init.pid)
            resp.read(20)
            init.read(20)
            progress(f"ipsecemu workers up: responder pid {resp.pid} in {b}, initiator pid {init.pid} in {a}")
            for group in groups:
                init.send("go")
                out = init.read((duration or 0) + SETTLE_S + (count or 0) * 0.5 + 10)
                checks.setdefault("ipsecemu_initiator", []).append({k: v for k, v in out.items() if k != "latencies"})
                resp.send("report")
                rep = resp.read(10)
                checks.setdefault("ipsecemu_responder", []).append(rep)
                record(PAIRS[0], group, Run(out["latencies"], out["seconds"], out["failed"]), set(rep["established"]))
            for w in (init, resp):
                w.stop()
            workers.clear()

            # -- 2. ipsecemu -> charon
            progress("ipsecemu -> strongSwan: starting charon (responder)")
            cb = Charon(b, extra_conf=_charon_conf(concurrency), retransmit_timeout=2.0)
            charons.append(cb)
            cb.start()
            checks["pids"].append(cb.pid)
            progress(f"charon pid {cb.pid} up in {b}")
            cb.load(Conn(name="bench", local_addrs=(ADDR[1],), remote_addrs=(ADDR[0],), local_id="right",
                         remote_id="left", psk=PSK, proposals=tuple(ike_proposal(g) for g in GROUPS),
                         children=(Child(local_ts=(NETS[1],), remote_ts=(NETS[0],), esp_proposals=(ESP,)),)))
            lb = UpdownListener(cb).start()
            listeners.append(lb)
            init = Worker(a, ["initiator", "--host", ADDR[0], "--remote", ADDR[1], "--groups", ",".join(groups),
                              *timing])
            workers.append(init)
            checks["pids"].append(init.pid)
            init.read(20)
            progress(f"ipsecemu initiator pid {init.pid} up in {a}")
            for group in groups:
                init.send("go")
                out = init.read((duration or 0) + SETTLE_S + (count or 0) * 0.5 + 10)
                checks.setdefault("ipsecemu_initiator", []).append({k: v for k, v in out.items() if k != "latencies"})
                lb.settle(len(out["latencies"]))
                confirmed, _ = lb.snapshot()
                record(PAIRS[1], group, Run(out["latencies"], out["seconds"], out["failed"]), confirmed)
            init.stop()
            workers.clear()

            # -- 3. charon -> charon
            progress("strongSwan -> strongSwan: starting charon (initiator)")
            ca = Charon(a, extra_conf=_charon_conf(concurrency), retransmit_timeout=2.0)
            charons.append(ca)
            ca.start()
            checks["pids"].append(ca.pid)
            progress(f"charon pid {ca.pid} up in {a}")
            for group in groups:
                ca.load(Conn(name=f"bench-{group}", local_addrs=(ADDR[0],), remote_addrs=(ADDR[1],),
                             local_id="left", remote_id="right", psk=PSK, proposals=(ike_proposal(group),),
                             children=(Child(local_ts=(NETS[0],), remote_ts=(NETS[1],), esp_proposals=(ESP,)),)))
            la = UpdownListener(ca).start()
            listeners.append(la)
            for group in groups:
                progress(f"strongSwan -> strongSwan {group}: {concurrency} vici initiates in flight")
                run_, by_uid = vici_run(ca, f"bench-{group}", duration, count, concurrency)
                la.settle(len(by_uid))
                lb.settle(len(by_uid))
                _, uid_spi = la.snapshot()
                confirmed, _ = lb.snapshot()
                run_.latencies = {uid_spi.get(uid, f"?{uid}"): v for uid, v in by_uid.items()}
                record(PAIRS[2], group, run_, confirmed)
            checks["charon_responder_samples"] = lb.samples
            checks["charon_initiator_samples"] = la.samples
        finally:
            for lis in listeners:
                lis.stop()
            for w in workers:
                w.stop()
            for c in charons:
                c.cleanup()
    base = {r.group: r.rate for r in results if r.pair == PAIRS[2]}
    for r in results:
        if base.get(r.group):
            r.ratio_to_strongswan = round(r.rate / base[r.group], 2)
    return results


def format_table(results: list[Result], concurrency: int) -> str:
    head = f"{'pair':<24}{'group':<10}{'setups':>8}{'seconds':>9}{'setups/s':>10}{'p50 ms':>9}{'p95 ms':>9}" \
           f"{'vs strongSwan':>15}"
    lines = [f"IKE_SA_INIT + IKE_AUTH with a Child SA (PSK, IKE {ike_proposal('<group>')}, ESP {ESP}), "
             f"{concurrency} in flight, each IKE SA deleted after setup", head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio_to_strongswan:.2f}x" if r.ratio_to_strongswan is not None else "-"
        lines.append(f"{r.pair:<24}{r.group:<10}{r.setups:>8}{r.seconds:>9.2f}{r.rate:>10.1f}{r.p50_ms:>9.2f}"
                     f"{r.p95_ms:>9.2f}{ratio:>15}")
    load = os.getloadavg()
    lines.append(f"note: initiator, responder (and the vici driver) all share this machine's {os.cpu_count()} "
                 f"cores, so each rate includes the DH/IKE work of both sides; load average "
                 f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return "\n".join(lines)


def _groups(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    if value is None:
        return list(GROUPS)
    items = [g.strip().lower() for g in value.split(",") if g.strip()]
    bad = [g for g in items if g not in GROUPS]
    if not items or bad:
        raise click.BadParameter(f"{', '.join(bad) or 'empty list'}: choose from {', '.join(GROUPS)}")
    return list(dict.fromkeys(items))


@click.command("ike")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results instead of a table.")
@click.option("--duration", type=click.FloatRange(0.2, 120), default=None,
              help=f"Seconds per pair and group [default: {DEFAULT_DURATION:g}, --quick: {QUICK_DURATION:g}].")
@click.option("--count", type=click.IntRange(1, 100000), default=None,
              help="Exactly N setups per pair and group (instead of --duration).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Setups in flight at once.")
@click.option("--groups", "groups", callback=_groups, default=None,
              help="DH groups, comma separated [default: ecp256,modp2048].")
@click.option("--quick", is_flag=True, help=f"About 10 s in all: {QUICK_DURATION:g} s per pair and group.")
def command(as_json: bool, duration: float | None, count: int | None, concurrency: int, groups: list[str],
            quick: bool) -> None:
    """IKE_SA + Child SA setups/s and p50/p95 latency (PSK): ipsecemu<->ipsecemu,
    ipsecemu->strongSwan and strongSwan<->strongSwan, in two network namespaces.  Needs root."""
    from ipsecemu.lab.netns import NetnsError
    from ipsecemu.lab.strongswan import CharonError

    if duration is not None and count is not None:
        raise click.UsageError("--duration and --count exclude each other")
    if count is None and duration is None:
        duration = QUICK_DURATION if quick else DEFAULT_DURATION
    try:
        results = run(groups=groups, duration=duration, count=count, concurrency=concurrency,
                      progress=lambda msg: click.echo(f"bench ike: {msg}", err=True))
    except (BenchError, NetnsError, CharonError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        click.echo(format_table(results, concurrency))


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
