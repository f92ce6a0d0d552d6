"""What ``ipsecemu bench lab`` reports: the cells (path x cipher x streams), their ratio to strongSwan
<-> strongSwan over alternating rounds (:mod:`ipsecemu.bench.rounds`), the 3x target, the table, the
JSON report and the bar chart."""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ipsecemu.bench.rounds import median_index, per_round_ratios, spread

__all__ = ["BASELINE", "CIPHERS", "PATHS", "TARGET", "Cell", "add_ratios", "format_table", "report", "summarise",
           "target", "write_chart"]

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
BASELINE = "strongswan"  # every ratio is to this path, same cipher and streams, same round
TARGET = 3.0  # ipsecemu <-> ipsecemu / strongSwan <-> strongSwan


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
    host_cpu: dict[str, float] = field(default_factory=dict)  # whole box, % of all CPUs: user/system/softirq/idle/steal
    # over the rounds (summarise): the fields above are the median round's, ratio = gbps / baseline_gbps
    rounds: int = 1
    baseline_gbps: float | None = None  # strongSwan <-> strongSwan in the same round
    ratio_min: float | None = None
    ratio_max: float | None = None
    ratios: list[float] = field(default_factory=list)  # per round (rounds with a ratio), in round order
    gbps_rounds: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.path, self.cipher, self.streams


def _baseline_key(c: Cell, ciphers: tuple[str, ...]) -> tuple[str, int]:
    return c.cipher or (ciphers[0] if ciphers else ""), c.streams


def add_ratios(cells: list[Cell], ciphers: tuple[str, ...]) -> None:
    """Ratios within one round: each cell to the strongSwan cell of the same cipher and streams."""
    base = {(c.cipher, c.streams): c.gbps for c in cells if c.path == BASELINE and c.gbps > 0}
    for c in cells:
        b = base.get(_baseline_key(c, ciphers))
        c.ratio = round(c.gbps / b, 2) if b and not c.error else None


def summarise(per_round: list[list[Cell]], ciphers: tuple[str, ...]) -> list[Cell]:
    """One cell per (path, cipher, streams) over the rounds, in round 1's order: the round with the
    median ratio (the baseline cell: its median Gbit/s), ratio min-max over the rounds.  A cell that
    failed in any round carries the error (and no ratio)."""
    by_round = [{c.key: c for c in cells} for cells in per_round]
    out: list[Cell] = []
    for key in dict.fromkeys(c.key for cells in per_round for c in cells):
        rs = [r.get(key) or Cell(*key, error="not measured") for r in by_round]
        base = []
        for r, c in zip(by_round, rs, strict=True):
            b = r.get((BASELINE, *_baseline_key(c, ciphers)))
            base.append(b.gbps if b is not None and not b.error else None)
        sp = spread(per_round_ratios([None if c.error else c.gbps for c in rs], base))
        pick = median_index([c.gbps for c in rs]) if key[0] == BASELINE or sp.pick is None else sp.pick
        cell = copy.deepcopy(rs[pick])
        errors = [f"round {i}/{len(rs)}: {c.error}" if len(rs) > 1 else c.error
                  for i, c in enumerate(rs, 1) if c.error]
        cell.error = "; ".join(errors)
        base_gbps = base[pick]
        cell.baseline_gbps = base_gbps
        cell.ratio = round(cell.gbps / base_gbps, 2) if base_gbps and not cell.error else None
        cell.rounds = sp.rounds
        r2 = sp.rounded(2)
        cell.ratio_min, cell.ratio_max, cell.ratios = r2.ratio_min, r2.ratio_max, list(r2.ratios)
        cell.gbps_rounds = [c.gbps for c in rs]
        out.append(cell)
    return out


def target(cells: list[Cell]) -> dict[str, Any]:
    """Is ipsecemu <-> ipsecemu >= 3x strongSwan <-> strongSwan in every measured cell?  Also
    how many times less CPU per bit our gateways need (the box is shared, so throughput alone
    also measures everything else running on it)."""
    ratios = {f"{c.cipher}/{c.streams}": c.ratio for c in cells if c.path == "ipsecemu"}
    known = [r for r in ratios.values() if r is not None]
    ss = {(c.cipher, c.streams): c.cpu_per_gbps for c in cells if c.path == "strongswan"}
    eff = {f"{c.cipher}/{c.streams}": round(s / c.cpu_per_gbps, 2)
           for c in cells if c.path == "ipsecemu" and c.cpu_per_gbps and (s := ss.get((c.cipher, c.streams)))}
    return {"required": TARGET, "ratios": ratios, "met": bool(known) and len(known) == len(ratios)
            and min(known) >= TARGET, "cpu_efficiency_vs_strongswan": eff}


def format_table(cells: list[Cell]) -> str:
    head = (f"{'path':<33} {'cipher':<12} {'streams':>7} {'Gbit/s':>8} {'retrans':>8} {'x strongSwan':>12} "
            f"{'min-max':>9} {'CPU%/Gbps':>9} {'box idle':>8}")
    out = [head, "-" * len(head)]
    for c in cells:
        ratio = f"{c.ratio:.2f}" if c.ratio is not None else "-"
        spread_ = f"{c.ratio_min:.2f}-{c.ratio_max:.2f}" if c.ratio_min is not None and c.ratio_max is not None else "-"
        gbps = f"{c.gbps:.3f}" if not c.error else "FAILED"
        idle = f"{c.host_cpu['idle']:.0f}%" if "idle" in c.host_cpu else "-"
        eff = f"{c.cpu_per_gbps:.0f}" if c.cpu_per_gbps else "-"
        out.append(f"{PATHS.get(c.path, c.path):<33} {CIPHERS.get(c.cipher, '-'):<12} {c.streams:>7} {gbps:>8} "
                   f"{c.retransmits:>8} {ratio:>12} {spread_:>9} {eff:>9} {idle:>8}")
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
    import matplotlib  # lazy: about 0.5 s to import, and only the chart needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

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


def report(cells: list[Cell], duration: float, rounds: int = 1) -> dict[str, Any]:
    return {
        "benchmark": "ipsecemu bench lab",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": duration,
        "rounds": rounds,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "paths": PATHS,
        "target": target(cells),
        "rows": [asdict(c) for c in cells],
    }
