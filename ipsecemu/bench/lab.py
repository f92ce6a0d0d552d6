"""``ipsecemu bench lab``: iperf3 TCP throughput through four kinds of path, in one run, on one
topology (:func:`~ipsecemu.lab.strongswan.pair_topology`: host L - gateway L = gateway R - host R):

* ``plain``: routed in clear, veth with GSO/TSO (64 KiB super-packets: not a fair baseline);
* ``plain-nogso``: routed in clear with ``gso_max_segs 1`` on every veth and MSS 1360, so every
  packet is handled one by one, as in a tunnel;
* ``strongswan``: charon + kernel-libipsec on both gateways (userspace ESP-in-UDP);
* ``ipsecemu``: two ``ipsecemu gateway run`` daemons (C batch loop, ESP-in-UDP);
* ``ipsecemu-strongswan``: our daemon on the left, charon on the right.

Each VPN path runs with every cipher (ESP AES-GCM-128/-256), each path with every stream count.
Alongside each cell we record where the time goes: CPU seconds per thread of the VPN processes
and UDP receive-buffer drops per gateway netns (``/proc/net/snmp`` ``RcvbufErrors``).
Every process is started and stopped by PID; the namespaces go on exit, also on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

__all__ = ["CIPHERS", "PATHS", "BenchError", "Cell", "command", "format_table", "run", "write_chart"]

#: ESP proposal (strongSwan notation) -> label
CIPHERS = {"aes128gcm16": "AES-128-GCM", "aes256gcm16": "AES-256-GCM"}
#: path id -> label (order = table order)
PATHS = {
    "plain": "plain routed (GSO)",
    "plain-nogso": "plain routed (no GSO, MSS 1360)",
    "strongswan": "strongSwan <-> strongSwan",
    "ipsecemu": "ipsecemu <-> ipsecemu",
    "ipsecemu-strongswan": "ipsecemu <-> strongSwan",
}
IKE = "aes128gcm16-prfsha256-ecp256"  # the IKE SA does not carry data: one proposal for all
PSK = "bench-lab-throwaway-psk"
TARGET = 3.0  # ipsecemu <-> ipsecemu / strongSwan <-> strongSwan
PORT = 5201
Say = Callable[[str], None]


class BenchError(RuntimeError):
    """A lab step failed (the message says which and why)."""


@dataclass
class Cell:
    path: str
    cipher: str  # "" for the plain paths
    streams: int
    gbps: float = 0.0
    retransmits: int = 0
    seconds: float = 0.0
    ratio: float | None = None  # to strongswan <-> strongswan, same cipher (plain: first cipher)
    error: str = ""
    udp_rcvbuf_errors: dict[str, int] = field(default_factory=dict)  # per gateway netns, this cell
    cpu: dict[str, Any] = field(default_factory=dict)  # per process: CPU % of wall time per thread
    counters: dict[str, Any] = field(default_factory=dict)  # ipsecemu gateways: loop counters after
    link_drops: dict[str, int] = field(default_factory=dict)  # "<netns>:<link> rx|tx": dropped, this cell
    cpu_per_gbps: float | None = None  # both VPN processes together: % of one core per Gbit/s
    profile: dict[str, Any] = field(default_factory=dict)  # --profile: perf samples of the VPN processes
    host_cpu: dict[str, float] = field(default_factory=dict)  # whole box, % of all CPUs: user/system/softirq/idle


# --------------------------------------------------------------------------- processes
class Procs:
    """Every child process of the run, so a Ctrl-C can stop all of them by PID."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> int | None:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout)
            except ProcessLookupError:
                pass
        if p in self.live:
            self.live.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p)


def _ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _run(ns: str, *argv: str, timeout: float = 10.0) -> str:
    r = subprocess.run(_ns(ns, *argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {ns}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


# --------------------------------------------------------------------------- measurements
def udp_rcvbuf_errors(ns: str) -> int:
    """``Udp: RcvbufErrors`` of netns ``ns`` (datagrams dropped because a socket was full)."""
    lines = [ln.split() for ln in _run(ns, "cat", "/proc/net/snmp").splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return 0
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=False)).get("RcvbufErrors", 0))


def link_drops(ns: str) -> dict[str, int]:
    """Dropped-packet counters of every link in ``ns`` (``ip -s link``): a tun whose reader is
    too slow drops at its queue (tx), a full socket shows in :func:`udp_rcvbuf_errors` instead."""
    out: dict[str, int] = {}
    for link in json.loads(_run(ns, "ip", "-j", "-s", "link", "show") or "[]"):
        st = link.get("stats64", {})
        for d in ("rx", "tx"):
            out[f"{ns}:{link['ifname']} {d}"] = int(st.get(d, {}).get("dropped", 0))
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per thread ``"<tid> <comm>"`` of process ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{tid} {comm}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


_STAT = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def host_ticks() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (the box is shared: iperf3, both gateways, the
    forwarding kernel and anything else running)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return [int(x) for x in first[1:1 + len(_STAT)]]


def host_share(before: list[int], after: list[int]) -> dict[str, float]:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    v = dict(zip(_STAT, d, strict=True))
    return {"user": round(100 * (v["user"] + v["nice"]) / total, 1), "system": round(100 * v["system"] / total, 1),
            "softirq": round(100 * (v["softirq"] + v["irq"]) / total, 1),
            "idle": round(100 * (v["idle"] + v["iowait"]) / total, 1)}


def cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Per-thread CPU % of wall time between two :func:`thread_cpu` samples (busy threads only)."""
    share = {k: round(100 * (v - before.get(k, 0.0)) / wall, 1) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in share.items() if v >= 1.0), key=lambda kv: -kv[1]))


def iperf(procs: Procs, client_ns: str, server_ns: str, dst: str, *, streams: int, duration: float,
          mss: int | None = None) -> tuple[float, int]:
    """One iperf3 TCP test (client -> server); returns (Gbit/s received, retransmits)."""
    server = procs.start(_ns(server_ns, "iperf3", "-s", "-1", "-B", dst, "-p", str(PORT)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while f":{PORT}" not in _run(server_ns, "ss", "-ltnH"):
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                raise BenchError(f"iperf3 server in {server_ns} did not start: {err.strip()}")
            time.sleep(0.05)
        argv = ["iperf3", "-c", dst, "-p", str(PORT), "-t", f"{duration:g}", "-P", str(streams), "-J",
                "--connect-timeout", "3000"]
        if mss:
            argv += ["-M", str(mss)]
        client = procs.start(_ns(client_ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = client.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 client did not finish within {duration + 30:g}s") from None
        finally:
            procs.stop(client)
        try:
            res = json.loads(out)
        except ValueError:
            raise BenchError(f"iperf3 client: {(err or out).decode(errors='replace').strip()[:300]}") from None
        if res.get("error"):
            raise BenchError(f"iperf3: {res['error']}")
        end = res["end"]
        return end["sum_received"]["bits_per_second"] / 1e9, int(end["sum_sent"].get("retransmits", 0))
    finally:
        procs.stop(server)


# --------------------------------------------------------------------------- VPN endpoints
class Gateway:
    """One ``ipsecemu gateway run`` daemon (a subprocess in ``ns``), reached by its control socket."""

    def __init__(self, procs: Procs, ns: str, workdir: Path, node: str, local: str, remote: str,
                 lts: str, rts: str, tun: str, esp: str, initiate: bool) -> None:
        self.procs, self.ns, self.node = procs, ns, node
        self.state = workdir / node
        self.cfg = workdir / f"{node}.yaml"
        self.cfg.write_text(f"""\
node: {node}
state_dir: {self.state}
local_addresses: [{local}]
datapath: {{encapsulation: udp, batch: 64}}
connections:
  pair:
    remote_address: {remote}
    local_id: {'left' if initiate else 'right'}
    remote_id: {'right' if initiate else 'left'}
    psk: {PSK}
    ike_proposals: {IKE}
    esp_proposals: {esp}
    local_ts: [{lts}]
    remote_ts: [{rts}]
    start_action: {'initiate' if initiate else 'listen'}
    dpd: {{interval: 0}}
    tunnel: {{name: {tun}, mtu: 1400}}
""")
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        # `ip netns exec` execs the command, so the pid is the daemon's own
        self.proc = self.procs.start(_ns(self.ns, sys.executable, "-m", "ipsecemu", "gateway", "run", str(self.cfg)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sock = self.state / "control.sock"
        if not _wait(lambda: sock.exists() or self.proc.poll() is not None, 15) or self.proc.poll() is not None:
            raise BenchError(f"ipsecemu gateway in {self.ns} did not start: {self.log_tail()}")

    def request(self, cmd: str) -> Any:
        from ipsecemu.gateway.control import request
        return request(self.state / "control.sock", cmd)

    def has_child(self) -> bool:
        from ipsecemu.ike.render import normalize  # the `sa list --json` view

        try:
            return any(s.get("child_sas") for s in normalize(self.request("list_sas")))
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def log_tail(self) -> str:
        err = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            err = self.proc.stderr.read().decode(errors="replace")
        p = self.state / "gateway.log"
        return (err + (p.read_text(errors="replace") if p.exists() else ""))[-1500:]

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, 10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


def _wait(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    from ipsecemu.lab.netns import wait_for
    return wait_for(pred, timeout, interval)


@dataclass
class Running:
    """The VPN endpoints of one path while it is measured."""

    pids: dict[str, int]  # role -> pid (for CPU sampling)
    gateways: list[Gateway]


@contextmanager
def vpn(path: str, topo: Any, esp: str, procs: Procs, workdir: Path, say: Say) -> Iterator[Running]:
    """Bring up ``path``'s two VPN endpoints with ESP ``esp`` and wait until data passes."""
    from ipsecemu.lab.strongswan import Charon, CharonError, pair_conn, ping

    gl, gr = topo.gateways
    charons: list[Charon] = []
    gws: list[Gateway] = []
    workdir = workdir / f"{path}-{esp}"
    workdir.mkdir()
    try:
        left_ours = path in ("ipsecemu", "ipsecemu-strongswan")
        right_ours = path == "ipsecemu"
        tun = topo.links[0][:-2]  # the topology prefix
        if left_ours:
            gws.append(Gateway(procs, gl, workdir, "left", topo.outer[0], topo.outer[1], topo.subnets[0],
                               topo.subnets[1], tun + "tl", esp, True))
        else:
            charons.append(Charon(gl, workdir / "charon-left", log_level=0))
        if right_ours:
            gws.append(Gateway(procs, gr, workdir, "right", topo.outer[1], topo.outer[0], topo.subnets[1],
                               topo.subnets[0], tun + "tr", esp, False))
        else:
            charons.append(Charon(gr, workdir / "charon-right", log_level=0))
        sides = ([] if left_ours else [0]) + ([] if right_ours else [1])
        for c, side in zip(charons, sides, strict=True):
            c.start()
            c.load(pair_conn(topo, side, ike_proposal=IKE, esp_proposal=esp, psk=PSK))
        for g in reversed(gws):  # responder first, so the initiator's first IKE_SA_INIT is answered
            g.start()
        if not left_ours:
            charons[0].initiate(child="net", ike="pair")
        for c in charons:
            c.wait_established(15)
        for g in gws:
            if not _wait(g.has_child, 15):
                raise BenchError(f"{path}: ipsecemu gateway in {g.ns} has no Child SA: {g.log_tail()}")
        # libipsec's route via ipsec0 and our tun routes appear just after the SAs
        if not _wait(lambda: ping(topo.hosts[0], topo.inside[1], count=1, timeout=5) == 1, 15, 0.2):
            tails = "".join(g.log_tail() for g in gws) + "".join(c.log_tail() for c in charons)
            raise BenchError(f"{path}: no ping through the tunnel: {tails[-1500:]}")
        pids = {f"ipsecemu {g.node}": g.pid for g in gws if g.pid}
        pids.update({f"charon {'left' if c.ns == gl else 'right'}": c.pid for c in charons if c.pid})
        say(f"{path} {esp}: tunnel up (pids " + ", ".join(f"{k} {v}" for k, v in pids.items()) + ")")
        yield Running(pids, gws)
    except CharonError as exc:
        raise BenchError(f"{path}: strongSwan: {exc}") from None
    finally:
        for g in gws:
            g.stop()
        for c in charons:
            c.stop()


# --------------------------------------------------------------------------- the plain paths
def _veths(topo: Any) -> list[tuple[str, str]]:
    p = topo.links[0][:-2]
    gl, gr = topo.gateways
    hl, hr = topo.hosts
    return [(hl, p + "lh"), (gl, p + "li"), (gl, p + "o0"), (gr, p + "o1"), (gr, p + "ri"), (hr, p + "rh")]


@contextmanager
def plain_routes(topo: Any) -> Iterator[None]:
    gl, gr = topo.gateways
    _run(gl, "ip", "route", "add", topo.subnets[1], "via", topo.outer[1])
    _run(gr, "ip", "route", "add", topo.subnets[0], "via", topo.outer[0])
    try:
        yield
    finally:
        subprocess.run(_ns(gl, "ip", "route", "del", topo.subnets[1]), capture_output=True)
        subprocess.run(_ns(gr, "ip", "route", "del", topo.subnets[0]), capture_output=True)


@contextmanager
def no_gso(topo: Any) -> Iterator[None]:
    """Every veth hands the stack one packet at a time (as a tun does), restored afterwards."""
    try:
        for ns, link in _veths(topo):
            _run(ns, "ip", "link", "set", "dev", link, "gso_max_segs", "1")
        yield
    finally:
        for ns, link in _veths(topo):
            subprocess.run(_ns(ns, "ip", "link", "set", "dev", link, "gso_max_segs", "65535"), capture_output=True)


# --------------------------------------------------------------------------- the run
def perf_summary(data: Path) -> dict[str, Any]:
    """Where the sampled processes spent their time: share per binary (kernel, libcrypto, our C
    module, Python) and the hottest call-graph entries (children %, i.e. including callees)."""
    def report(*args: str) -> list[list[str]]:
        r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none", *args],
                           capture_output=True, text=True, timeout=60)
        return [ln.split() for ln in r.stdout.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    by_dso = {" ".join(f[1:]): float(f[0].rstrip("%")) for f in report("--no-children", "--sort", "dso")
              if f and f[0].endswith("%")}
    top = [{"total": float(f[0].rstrip("%")), "self": float(f[1].rstrip("%")), "symbol": " ".join(f[3:])}
           for f in report("--children", "--sort", "sym", "--percent-limit", "3")
           if len(f) >= 4 and f[0].endswith("%") and f[1].endswith("%")]
    return {"by_dso": by_dso, "top": top[:25]}


def measure(cell: Cell, procs: Procs, topo: Any, duration: float, running: Running | None,
            mss: int | None = None, profile_dir: Path | None = None) -> Cell:
    gws = topo.gateways
    drops0 = {ns: udp_rcvbuf_errors(ns) for ns in gws}
    links0 = {k: v for ns in gws for k, v in link_drops(ns).items()}
    pids = running.pids if running else {}
    cpu0 = {k: thread_cpu(p) for k, p in pids.items()}
    host0 = host_ticks()
    perf = None
    if profile_dir is not None and pids:
        data = profile_dir / f"perf-{cell.path}-{cell.cipher}-{cell.streams}.data"
        # start sampling 0.5 s in (TCP past slow start), stop before iperf3 does
        perf = procs.start(["perf", "record", "-q", "-g", "-D", "500", "-o", str(data), "-p",
                            ",".join(str(p) for p in pids.values()), "--", "sleep", f"{max(1.0, duration - 0.5):g}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        cell.gbps, cell.retransmits = iperf(procs, topo.hosts[0], topo.hosts[1], topo.inside[1],
                                            streams=cell.streams, duration=duration, mss=mss)
    except BenchError as exc:
        cell.error = str(exc)
    cell.seconds = round(time.monotonic() - t0, 2)
    if perf is not None:
        try:
            perf.wait(10)
        except subprocess.TimeoutExpired:
            pass
        procs.stop(perf)
        cell.profile = perf_summary(data) if data.exists() else {"error": "perf recorded nothing"}
    cell.host_cpu = host_share(host0, host_ticks())
    cell.cpu = {k: cpu_share(cpu0[k], thread_cpu(p), cell.seconds) for k, p in pids.items()}
    if pids and cell.gbps > 0:
        cell.cpu_per_gbps = round(sum(sum(t.values()) for t in cell.cpu.values()) / cell.gbps, 1)
    cell.udp_rcvbuf_errors = {ns: udp_rcvbuf_errors(ns) - d for ns, d in drops0.items()}
    links1 = {k: v for ns in gws for k, v in link_drops(ns).items()}
    cell.link_drops = {k: v - links0.get(k, 0) for k, v in links1.items() if v - links0.get(k, 0) > 0}
    if running:
        for g in running.gateways:
            try:
                cell.counters[g.node] = g.request("counters")
            except Exception as exc:  # noqa: BLE001 - counters are a diagnostic, not the result
                cell.counters[g.node] = {"error": str(exc)}
    return cell


def run(*, duration: float = 10.0, streams: tuple[int, ...] = (1, 4), ciphers: tuple[str, ...] = tuple(CIPHERS),
        paths: tuple[str, ...] = tuple(PATHS), say: Say = lambda _m: None, prefix: str | None = None,
        profile: bool = False) -> list[Cell]:
    """Run every (path, cipher, streams) cell on one topology; cells that fail carry ``error``."""
    from ipsecemu.lab.strongswan import pair_topology

    prefix = prefix or "bl" + uuid.uuid4().hex[:5]
    procs = Procs()
    cells: list[Cell] = []
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        workdir = Path(tempfile.mkdtemp(prefix="ipsecemu-bench-lab-"))
        stack.callback(shutil.rmtree, workdir, True)
        say(f"topology {prefix}L/R (gateways) {prefix}HL/HR (hosts)")
        topo = stack.enter_context(pair_topology(prefix))

        def one(cell: Cell, running: Running | None, mss: int | None = None) -> None:
            say(f"{cell.path} {cell.cipher or '-'} {cell.streams} stream(s): iperf3 {duration:g}s")
            measure(cell, procs, topo, duration, running, mss, workdir if profile else None)
            busy = ", ".join(f"{k} {v:g}%" for k, v in cell.host_cpu.items())
            say(f"  -> {cell.gbps:.3f} Gbit/s, {cell.retransmits} retransmits; box CPU {busy}" +
                (f" ERROR {cell.error}" if cell.error else ""))
            cells.append(cell)

        plain = [p for p in paths if p.startswith("plain")]
        if plain:
            with plain_routes(topo):
                for n in streams:
                    if "plain" in plain:
                        one(Cell("plain", "", n), None)
                    if "plain-nogso" in plain:
                        with no_gso(topo):
                            one(Cell("plain-nogso", "", n), None, mss=1360)
        for cipher in ciphers:
            for path in (p for p in paths if not p.startswith("plain")):
                try:
                    with vpn(path, topo, cipher, procs, workdir, say) as running:
                        for n in streams:
                            one(Cell(path, cipher, n), running)
                except BenchError as exc:
                    say(f"{path} {cipher}: {exc}")
                    for n in streams:
                        if not any(c.path == path and c.cipher == cipher and c.streams == n for c in cells):
                            cells.append(Cell(path, cipher, n, error=str(exc)))
    add_ratios(cells, ciphers)
    return cells


def add_ratios(cells: list[Cell], ciphers: tuple[str, ...]) -> None:
    base = {(c.cipher, c.streams): c.gbps for c in cells if c.path == "strongswan" and c.gbps > 0}
    for c in cells:
        b = base.get((c.cipher or (ciphers[0] if ciphers else ""), c.streams))
        c.ratio = round(c.gbps / b, 2) if b and not c.error else None


def target(cells: list[Cell]) -> dict[str, Any]:
    """Is ipsecemu <-> ipsecemu >= 3x strongSwan <-> strongSwan in every measured cell?  Also
    how many times less CPU per bit our gateways need (the box is shared, so throughput alone
    also measures everything else running on it)."""
    ratios = {f"{c.cipher}/{c.streams}": c.ratio for c in cells if c.path == "ipsecemu"}
    known = [r for r in ratios.values() if r is not None]
    ss = {(c.cipher, c.streams): c.cpu_per_gbps for c in cells if c.path == "strongswan"}
    eff = {f"{c.cipher}/{c.streams}": round(ss[(c.cipher, c.streams)] / c.cpu_per_gbps, 2)
           for c in cells if c.path == "ipsecemu" and c.cpu_per_gbps and ss.get((c.cipher, c.streams))}
    return {"required": TARGET, "ratios": ratios, "met": bool(known) and len(known) == len(ratios)
            and min(known) >= TARGET, "cpu_efficiency_vs_strongswan": eff}


def format_table(cells: list[Cell]) -> str:
    head = (f"{'path':<33} {'cipher':<12} {'streams':>7} {'Gbit/s':>8} {'retrans':>8} {'x strongSwan':>12} "
            f"{'CPU%/Gbps':>9} {'box idle':>8}")
    out = [head, "-" * len(head)]
    for c in cells:
        ratio = f"{c.ratio:.2f}" if c.ratio is not None else "-"
        gbps = f"{c.gbps:.3f}" if not c.error else "FAILED"
        idle = f"{c.host_cpu['idle']:.0f}%" if "idle" in c.host_cpu else "-"
        eff = f"{c.cpu_per_gbps:.0f}" if c.cpu_per_gbps else "-"
        out.append(f"{PATHS.get(c.path, c.path):<33} {CIPHERS.get(c.cipher, '-'):<12} {c.streams:>7} {gbps:>8} "
                   f"{c.retransmits:>8} {ratio:>12} {eff:>9} {idle:>8}")
        if c.error:
            out.append(f"    {c.error.splitlines()[0][:150]}")
        losses = [f"{k} dropped {v}" for k, v in c.link_drops.items()]
        losses += [f"UDP socket full in {ns}: {v}" for ns, v in c.udp_rcvbuf_errors.items() if v > 0]
        if losses:
            out.append("    losses: " + "; ".join(losses))
    t = target(cells)
    if t["ratios"]:
        got = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}x'}" for k, v in t["ratios"].items())
        out.append(f"target ipsecemu <-> ipsecemu >= {TARGET:g}x strongSwan: {'MET' if t['met'] else 'MISSED'} "
                   f"({got})")
    if t["cpu_efficiency_vs_strongswan"]:
        eff_s = ", ".join(f"{k} {v:.2f}x" for k, v in t["cpu_efficiency_vs_strongswan"].items())
        out.append(f"CPU per Gbit/s, strongSwan's gateways / ours: {eff_s}")
    return "\n".join(out)


def write_chart(cells: list[Cell], path: Path) -> None:
    """Grouped bars: one group per (cipher, streams), one bar per path (plain bars repeat per cipher)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ciphers = list(dict.fromkeys(c.cipher for c in cells if c.cipher)) or [""]
    streams = list(dict.fromkeys(c.streams for c in cells))
    groups = [(ci, n) for ci in ciphers for n in streams]
    paths = [p for p in PATHS if any(c.path == p for c in cells)]

    def value(p: str, ci: str, n: int) -> float:
        for c in cells:
            if c.path == p and c.streams == n and (c.cipher == ci or not c.cipher):
                return c.gbps
        return 0.0

    fig, ax = plt.subplots(figsize=(max(7, 2.4 * len(groups) + 2), 5.5))
    width = 0.8 / max(1, len(paths))
    for i, p in enumerate(paths):
        xs = [g + (i - (len(paths) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [value(p, ci, n) for ci, n in groups], width, label=PATHS[p])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{CIPHERS.get(ci, 'clear')}\n{n} stream{'s' if n > 1 else ''}" for ci, n in groups])
    ax.set_ylabel("Gbit/s (iperf3 TCP)")
    ax.set_yscale("log")
    ax.set_title("ipsecemu bench lab: throughput through a 4-netns pair")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def report(cells: list[Cell], duration: float) -> dict[str, Any]:
    return {
        "benchmark": "ipsecemu bench lab",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": duration,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "paths": PATHS,
        "target": target(cells),
        "rows": [asdict(c) for c in cells],
    }


# --------------------------------------------------------------------------- CLI
def _streams(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(int(x) for x in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of stream counts, got {value!r}") from None
    if not items or any(not 1 <= n <= 128 for n in items):
        raise click.BadParameter("each stream count must be 1..128")
    return tuple(dict.fromkeys(items))


def _ciphers(_ctx: click.Context, _p: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(dict.fromkeys(x.strip().lower() for x in value.split(",") if x.strip()))
    bad = [x for x in items if x not in CIPHERS]
    if not items or bad:
        raise click.BadParameter(f"unknown cipher {', '.join(bad) or '(none)'}; choose from {', '.join(CIPHERS)}")
    return items


def _missing() -> str | None:
    from ipsecemu.lab.strongswan import charon_available

    if os.geteuid() != 0:
        return "needs root (network namespaces): run as root or with sudo"
    for tool in ("iperf3", "ip", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {'iperf3' if tool == 'iperf3' else 'iproute2'})"
    return charon_available()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout instead of a table.")
@click.option("--duration", type=click.FloatRange(1, 600), default=None,
              help="Seconds per iperf3 run [default: 10, --quick: 2].")
@click.option("--streams", callback=_streams, help="Parallel TCP streams per run, comma separated [default: 1,4].")
@click.option("--ciphers", callback=_ciphers, help=f"ESP ciphers, comma separated [default: {','.join(CIPHERS)}].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Directory for lab.json and lab.png.")
@click.option("--quick", is_flag=True, help="About 2 s per cell, 1 stream, AES-128-GCM (for tests).")
@click.option("--profile", is_flag=True,
              help="perf-sample the VPN processes in every VPN cell (needs perf): where their time goes, in the JSON.")
def command(as_json: bool, duration: float | None, streams: tuple[int, ...] | None,
            ciphers: tuple[str, ...] | None, out_dir: Path, quick: bool, profile: bool) -> None:
    """iperf3 TCP throughput: plain routing vs strongSwan vs ipsecemu, in one run.

    Four netns (host - gateway = gateway - host).  Paths: plain routed with and without GSO,
    strongSwan libipsec <-> libipsec, ipsecemu <-> ipsecemu (gateway daemons, C loop) and
    ipsecemu <-> strongSwan, each VPN path with every cipher.  Prints a table with the ratio to
    strongSwan <-> strongSwan, writes OUT/lab.json and a bar chart OUT/lab.png.  Progress goes to
    stderr.  Needs root, iperf3 and strongSwan (charon + kernel-libipsec).
    """
    reason = _missing() or (None if not profile or shutil.which("perf") else
                            "--profile needs perf (apt-get install linux-perf)")
    if reason:
        raise click.ClickException(reason)
    duration = duration if duration is not None else (2.0 if quick else 10.0)
    streams = streams or ((1,) if quick else (1, 4))
    ciphers = ciphers or (("aes128gcm16",) if quick else tuple(CIPHERS))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"--out {out_dir}: {exc.strerror}") from None

    def say(msg: str) -> None:
        click.echo(f"bench lab: {msg}", err=True)

    # SIGTERM unwinds like Ctrl-C, so every process and netns is removed; children forked by
    # pyroute2 (netns creation) inherit the handler and must simply die as they would have
    me = os.getpid()

    def on_term(sig: int, _frame: object) -> None:
        if os.getpid() != me:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        cells = run(duration=duration, streams=streams, ciphers=ciphers, say=say, profile=profile)
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped and removed")
        raise SystemExit(130) from None
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    rep = report(cells, duration)
    (out_dir / "lab.json").write_text(json.dumps(rep, indent=1) + "\n")
    write_chart(cells, out_dir / "lab.png")
    say(f"wrote {out_dir / 'lab.json'} and {out_dir / 'lab.png'}")
    if as_json:
        click.echo(json.dumps(rep, indent=1))
    else:
        click.echo(format_table(cells))
    if any(c.error for c in cells):
        raise SystemExit(1)
