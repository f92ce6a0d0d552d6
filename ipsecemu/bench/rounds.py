"""The one rounds/median rule of every bench that prints a ratio (dataplane vs ``openssl speed``,
lab and macsec vs strongSwan, ike vs strongSwan).

A candidate and its baseline are measured in alternating rounds (baseline, candidate, baseline,
candidate, ...), so both see the same box state in each round; the bench reports the per-round
ratio of the median round (lower median: always one real round, so ``value / baseline == ratio``
holds for the numbers printed next to it) and the min-max over all rounds.  A single shot of the
baseline made ratios swing 0.7-1.2 between runs of the same code.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ipsecemu.base.errors import BenchError, ConfigError

__all__ = ["DEFAULT_ROUNDS", "Spread", "check_rounds", "median_index", "per_round_ratios", "spread"]

DEFAULT_ROUNDS = 5


def check_rounds(rounds: int) -> int:
    """``rounds`` itself if it is at least 1 (the CLI options already enforce it; library calls too)."""
    if rounds < 1:
        raise ConfigError(f"rounds: must be >= 1, got {rounds}")
    return rounds


def per_round_ratios(values: Sequence[float | None], baselines: Sequence[float | None]) -> list[float | None]:
    """``value / baseline`` round by round; None where either is missing or not positive (a failed
    round, OpenSSL not installed)."""
    if len(values) != len(baselines):
        raise BenchError(f"{len(values)} values but {len(baselines)} baselines")
    return [v / b if v and b and v > 0 and b > 0 else None for v, b in zip(values, baselines, strict=True)]


@dataclass(frozen=True)
class Spread:
    """A cell's ratios over its rounds."""

    rounds: int  # rounds measured, including those without a ratio
    pick: int | None  # index of the median round (None: no round has a ratio)
    ratio: float | None  # the median round's ratio
    ratio_min: float | None
    ratio_max: float | None
    ratios: tuple[float, ...]  # the rounds that have a ratio, in round order

    def rounded(self, digits: int) -> Spread:
        """The same spread with every ratio rounded to ``digits`` (for reports that round theirs)."""
        def rnd(x: float | None) -> float | None:
            return None if x is None else round(x, digits)

        return Spread(self.rounds, self.pick, rnd(self.ratio), rnd(self.ratio_min), rnd(self.ratio_max),
                      tuple(round(x, digits) for x in self.ratios))

    def fields(self) -> dict[str, object]:
        """The JSON fields every ratio bench shares: rounds, ratio_min, ratio_max, ratios."""
        return {"rounds": self.rounds, "ratio_min": self.ratio_min, "ratio_max": self.ratio_max,
                "ratios": list(self.ratios)}


def median_index(values: Sequence[float]) -> int:
    """Index of the lower median of ``values`` (earliest on ties): the round to show when there is no
    ratio to choose by (no baseline, or the baseline itself)."""
    if not values:
        raise BenchError("median of no values")
    return list(values).index(statistics.median_low(values))


def spread(ratios: Sequence[float | None]) -> Spread:
    """Median (lower median) of the per-round ``ratios`` that exist, which round it was, and min-max.

    With an even number of ratios the lower of the two middle ones is taken, so the reported ratio is
    always one that was measured; ties go to the earliest round."""
    have = [x for x in ratios if x is not None]
    if not have:
        return Spread(len(ratios), None, None, None, None, ())
    mid = statistics.median_low(have)
    return Spread(len(ratios), list(ratios).index(mid), mid, min(have), max(have), tuple(have))
