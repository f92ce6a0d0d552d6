"""What ``ipsecemu bench ike`` measures and reports: the pairs and groups, one result per (pair, group)
over alternating rounds with its ratio to strongSwan <-> strongSwan (:mod:`ipsecemu.bench.rounds`),
and the table."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ipsecemu.bench.rounds import median_index, per_round_ratios, spread

GROUPS = ("ecp256", "modp2048")
PAIRS = ("ipsecemu-ipsecemu", "ipsecemu-strongswan", "strongswan-strongswan")
PSK = "ipsecemu-bench-psk-0123456789"  # lab-only secret, never a real one
ESP = "aes128gcm16"
ADDR = ("192.0.2.1", "192.0.2.2")  # initiator side A, responder side B (RFC 5737)
NETS = ("10.1.0.0/24", "10.2.0.0/24")  # traffic selectors; gateways hold .1 on lo
DEFAULT_DURATION, QUICK_DURATION = 6.0, 1.0
SETTLE_S = 10.0  # how long in-flight setups may take after the window closes
BASELINE = PAIRS[2]  # every ratio is to strongSwan <-> strongSwan, same group, same round
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
    # over the rounds (summarise): the fields above are the median round's
    rounds: int = 1
    ratio_min: float | None = None
    ratio_max: float | None = None
    ratios: list[float] = field(default_factory=list)  # per round (rounds with a ratio), in round order
    rate_rounds: list[float] = field(default_factory=list)

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



def summarise(per_round: list[list[Result]]) -> list[Result]:
    """One result per (pair, group) over the rounds, in round 1's order: the round with the median
    ratio of its rate to strongSwan <-> strongSwan's rate in the same round (the baseline itself: its
    median rate), with min-max."""
    by_round = [{(r.pair, r.group): r for r in results} for results in per_round]
    out: list[Result] = []
    for key in dict.fromkeys(k for r in by_round for k in r):
        rs = [r.get(key) for r in by_round]
        rates = [x.rate if x is not None else 0.0 for x in rs]
        base = [r[(BASELINE, key[1])].rate if (BASELINE, key[1]) in r else None for r in by_round]
        sp = spread(per_round_ratios(rates, base))
        pick = median_index(rates) if key[0] == BASELINE or sp.pick is None else sp.pick
        chosen = rs[pick] or Result(*key, setups=0, seconds=0.0, rate=0.0, p50_ms=0.0, p95_ms=0.0)
        res = copy.deepcopy(chosen)
        b = base[pick]
        res.ratio_to_strongswan = round(res.rate / b, 2) if b and res.rate else None
        res.rounds = sp.rounds
        r2 = sp.rounded(2)
        res.ratio_min, res.ratio_max, res.ratios = r2.ratio_min, r2.ratio_max, list(r2.ratios)
        res.rate_rounds = rates
        out.append(res)
    return out


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

