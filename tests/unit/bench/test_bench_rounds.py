"""ipsecemu.bench.rounds: the one median-of-per-round-ratios rule every ratio bench uses."""

from __future__ import annotations

import pytest

from ipsecemu.base.errors import BenchError, ConfigError
from ipsecemu.bench.rounds import check_rounds, median_index, per_round_ratios, spread


def test_odd_rounds_take_the_middle_ratio_and_its_round() -> None:
    sp = spread([1.2, 0.7, 1.0, 0.9, 1.1])
    assert sp.ratio == 1.0 and sp.pick == 2
    assert (sp.ratio_min, sp.ratio_max) == (0.7, 1.2)
    assert sp.ratios == (1.2, 0.7, 1.0, 0.9, 1.1) and sp.rounds == 5


def test_even_rounds_take_the_lower_middle_a_measured_one() -> None:
    sp = spread([2.0, 4.0, 1.0, 3.0])
    assert sp.ratio == 2.0 and sp.pick == 0  # not the mean 2.5 of the middle pair
    assert (sp.ratio_min, sp.ratio_max) == (1.0, 4.0)


def test_rounds_without_a_ratio_count_but_do_not_vote() -> None:
    sp = spread([None, 3.0, None, 1.0, 2.0])
    assert sp.rounds == 5 and sp.ratios == (3.0, 1.0, 2.0)
    assert sp.ratio == 2.0 and sp.pick == 4  # the index is into all rounds
    none = spread([None, None])
    assert (none.rounds, none.pick, none.ratio, none.ratio_min, none.ratio_max, none.ratios) == (2, None, None,
                                                                                               None, None, ())


def test_ties_go_to_the_earliest_round() -> None:
    assert spread([1.0, 1.0, 1.0]).pick == 0
    assert median_index([5.0, 3.0, 3.0, 9.0]) == 1


def test_per_round_ratios_pair_values_with_their_own_baseline() -> None:
    assert per_round_ratios([2.0, 3.0, 0.0, 4.0], [1.0, None, 2.0, 8.0]) == [2.0, None, None, 0.5]
    with pytest.raises(BenchError):
        per_round_ratios([1.0], [1.0, 2.0])


def test_single_round_is_its_own_median() -> None:
    sp = spread(per_round_ratios([1.5], [1.0]))
    assert (sp.rounds, sp.pick, sp.ratio, sp.ratio_min, sp.ratio_max) == (1, 0, 1.5, 1.5, 1.5)


def test_json_fields_optionally_rounded() -> None:
    sp = spread([1.23456, 0.98765, 1.11111])
    assert sp.fields() == {"rounds": 3, "ratio_min": 0.98765, "ratio_max": 1.23456,
                           "ratios": [1.23456, 0.98765, 1.11111]}
    assert sp.rounded(2).fields() == {"rounds": 3, "ratio_min": 0.99, "ratio_max": 1.23,
                                      "ratios": [1.23, 0.99, 1.11]}
    assert sp.rounded(2).ratio == 1.11 and sp.rounded(2).pick == sp.pick
    assert spread([None]).rounded(2).fields() == {"rounds": 1, "ratio_min": None, "ratio_max": None, "ratios": []}


def test_rounds_must_be_positive() -> None:
    assert check_rounds(5) == 5
    with pytest.raises(ConfigError):
        check_rounds(0)
    with pytest.raises(BenchError):
        median_index([])
