"""Full-jitter backoff: uniform(0, min(cap, base * multiplier**(n-1))), Retry-After a floor."""

from __future__ import annotations

import random

import pytest

from gateway_worker.backoff import backoff_bound, backoff_delay

DEFAULTS = {"base_s": 1.0, "multiplier": 4.0, "cap_s": 300.0}


def test_bounds_follow_the_formula_with_the_default_policy() -> None:
    bounds = [backoff_bound(attempt, **DEFAULTS) for attempt in range(1, 8)]
    assert bounds == [1.0, 4.0, 16.0, 64.0, 256.0, 300.0, 300.0]


@pytest.mark.parametrize("attempt", range(1, 13))
def test_delay_stays_within_its_bound_over_many_seeds(attempt: int) -> None:
    bound = backoff_bound(attempt, **DEFAULTS)
    delays = [backoff_delay(attempt, rng=random.Random(seed), **DEFAULTS) for seed in range(2000)]
    assert all(0.0 <= delay <= bound for delay in delays)
    # Full jitter spreads over the whole range, not just near the bound.
    assert min(delays) < 0.05 * bound
    assert max(delays) > 0.95 * bound


def test_same_seed_gives_the_same_delays() -> None:
    first = [backoff_delay(n, rng=random.Random(42), **DEFAULTS) for n in range(1, 7)]
    second = [backoff_delay(n, rng=random.Random(42), **DEFAULTS) for n in range(1, 7)]
    assert first == second


def test_retry_after_is_a_floor() -> None:
    for seed in range(200):
        delay = backoff_delay(1, rng=random.Random(seed), retry_after_s=30.0, **DEFAULTS)
        assert delay == 30.0


def test_retry_after_below_the_jittered_delay_changes_nothing() -> None:
    plain = backoff_delay(6, rng=random.Random(1), **DEFAULTS)
    floored = backoff_delay(6, rng=random.Random(1), retry_after_s=0.001, **DEFAULTS)
    assert floored == plain


def test_retry_after_is_capped() -> None:
    delay = backoff_delay(1, rng=random.Random(0), retry_after_s=86_400.0, **DEFAULTS)
    assert delay == 300.0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert backoff_bound(10_000, **DEFAULTS) == 300.0
    assert 0.0 <= backoff_delay(10_000, rng=random.Random(3), **DEFAULTS) <= 300.0


def test_multiplier_one_keeps_a_constant_bound() -> None:
    assert {backoff_bound(n, base_s=2.0, multiplier=1.0, cap_s=10.0) for n in range(1, 20)} == {2.0}


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_bound(0, **DEFAULTS)
