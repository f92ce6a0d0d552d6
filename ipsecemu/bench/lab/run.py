"""One ``ipsecemu bench lab`` run: the pair topology once, then ``rounds`` alternating rounds, each
measuring every (path, cipher, streams) cell (the strongSwan baseline before the ipsecemu paths of the
same cipher), summarised per cell by :func:`~ipsecemu.bench.lab.report.summarise`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ipsecemu.base.errors import BenchError
from ipsecemu.bench.lab.paths import Running, no_gso, plain_routes, vpn
from ipsecemu.bench.lab.report import CIPHERS, PATHS, Cell, summarise
from ipsecemu.bench.lab.worker import (
    Say,
    cpu_share,
    host_share,
    host_ticks,
    iperf,
    link_drops,
    perf_summary,
    thread_cpu,
    udp_rcvbuf_errors,
)
from ipsecemu.bench.procs import Procs
from ipsecemu.bench.rounds import DEFAULT_ROUNDS, check_rounds
from ipsecemu.lab.harness import pair_topology

__all__ = ["measure", "run"]


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
        data = profile_dir / f"perf-{cell.path}-{cell.cipher}-{cell.streams}-{time.monotonic_ns()}.data"
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
        profile: bool = False, rounds: int = DEFAULT_ROUNDS) -> list[Cell]:
    """Run every (path, cipher, streams) cell ``rounds`` times on one topology, in alternating rounds;
    one summarised cell each (cells that failed in a round carry ``error``)."""
    check_rounds(rounds)
    prefix = prefix or "bl" + uuid.uuid4().hex[:5]
    procs = Procs()
    per_round: list[list[Cell]] = []
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        workdir = Path(tempfile.mkdtemp(prefix="ipsecemu-bench-lab-"))
        stack.callback(shutil.rmtree, workdir, True)
        say(f"topology {prefix}L/R (gateways) {prefix}HL/HR (hosts)")
        topo = stack.enter_context(pair_topology(prefix))
        for rnd in range(1, rounds + 1):
            per_round.append(_one_round(topo, procs, workdir / f"round{rnd}", duration, streams, ciphers, paths,
                                        say, profile, f"round {rnd}/{rounds}"))
    return summarise(per_round, ciphers)


def _one_round(topo: Any, procs: Procs, workdir: Path, duration: float, streams: tuple[int, ...],
               ciphers: tuple[str, ...], paths: tuple[str, ...], say: Say, profile: bool, tag: str) -> list[Cell]:
    """Every cell once: the plain paths, then per cipher strongSwan <-> strongSwan and the ipsecemu paths."""
    workdir.mkdir()
    cells: list[Cell] = []

    def one(cell: Cell, running: Running | None, mss: int | None = None) -> None:
        say(f"{cell.path} {cell.cipher or '-'} {cell.streams} stream(s): iperf3 {duration:g}s ({tag})")
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
    return cells
