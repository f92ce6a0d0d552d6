"""The soft data limit's jitter (branch resil2): the initiator rekeys 1-2 bands before the limit
at random, the other side keeps it; parsed, validated and dumped like the other lifetime keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsecemu.config.connection import ConnectionConfigError, SaLifetime, parse_connection
from ipsecemu.config.connection_dump import to_dict

BASE = {"name": "c", "remote_address": "192.0.2.2", "local_address": "192.0.2.1", "psk": "secret-psk-123",
        "local_ts": "10.1.0.0/24", "remote_ts": "10.2.0.0/24"}
MB = 1 << 20


def test_initiator_rekeys_a_random_band_early_the_other_side_keeps_its_limit() -> None:
    life = SaLifetime(3600, 16384, jitter_percent=5)
    soft, hard = int(16 * MB * 0.9), 16 * MB
    band = hard * 0.05
    assert life.jittered_soft(soft, hard, 0.0, first=True) == int(soft - band)
    assert life.jittered_soft(soft, hard, 0.999, first=True) == int(soft - 1.999 * band)
    assert life.jittered_soft(soft, hard, 0.5, first=False) == soft


def test_no_limit_or_no_jitter_leaves_the_soft_limit_alone() -> None:
    assert SaLifetime(3600, jitter_percent=5).jittered_soft(0, 0, 0.5) == 0
    assert SaLifetime(3600, 100, jitter_percent=0).jittered_soft(90, 100, 0.5) == 90


def test_the_band_covers_a_rekey_at_the_current_rate_but_never_below_half() -> None:
    life = SaLifetime(3600, 8192, jitter_percent=5)
    soft, hard = 6 * MB, 8 * MB
    assert life.jittered_soft(soft, hard, 0.0, min_band=1 * MB) == 5 * MB  # 1 MB > 5 % of 8 MB
    assert life.jittered_soft(soft, hard, 0.0, min_band=100 * MB) == 3 * MB


@given(st.integers(1, 1 << 40), st.floats(0, 0.999), st.integers(0, 49), st.floats(0, 1e12))
def test_jittered_soft_stays_between_half_and_the_limit(soft: int, r: float, pct: int, band: float) -> None:
    out = SaLifetime(3600, jitter_percent=pct).jittered_soft(soft, soft * 2, r, True, band)
    assert soft // 2 <= out <= soft


def test_parsed_with_its_strongswan_alias_dumped_and_validated() -> None:
    c = parse_connection({**BASE, "child_lifetime": {"seconds": 3600, "kilobytes": 1024, "rand_percent": 7}})
    assert c.child_lifetime.jitter_percent == 7
    assert to_dict(c)["child_lifetime"]["jitter_percent"] == 7
    assert parse_connection({**BASE}).child_lifetime.jitter_percent == 5
    # a margin near 100 % (valid before the band existed) gets a smaller default band, not an error
    near = parse_connection({**BASE, "child_lifetime": {"seconds": 3600, "rekey_margin_percent": 95}})
    assert near.child_lifetime.jitter_percent == 2
    with pytest.raises(ConnectionConfigError, match=r"jitter_percent.*must be below 100"):
        parse_connection({**BASE, "child_lifetime": {"seconds": 3600, "rekey_margin_percent": 60,
                                                     "jitter_percent": 20}})
    with pytest.raises(ConnectionConfigError, match=r"jitter_percent: must be in 0\.\.49"):
        parse_connection({**BASE, "child_lifetime": {"seconds": 3600, "jitter_percent": 50}})
