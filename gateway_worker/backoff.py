"""Full-jitter exponential backoff (docs/contract.md §4), a pure function of its inputs.

``delay = uniform(0, min(cap, base * multiplier ** (attempt - 1)))``, raised to
a downstream's ``Retry-After`` when that is larger. The random source is an
argument, so tests check the bounds over many seeds without sleeping.
"""

from __future__ import annotations

import math
import random

__all__ = ["backoff_bound", "backoff_delay"]


def backoff_bound(attempt: int, *, base_s: float, multiplier: float, cap_s: float) -> float:
    """Upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    try:
        raw = base_s * multiplier ** (attempt - 1)
    except OverflowError:
        raw = math.inf
    return min(cap_s, raw)


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    multiplier: float,
    cap_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait before the attempt after ``attempt``.

    ``retry_after_s`` (a downstream's ``Retry-After``) is a floor, itself
    capped at ``cap_s`` so a downstream cannot park an event indefinitely.
    """
    delay = rng.uniform(
        0, backoff_bound(attempt, base_s=base_s, multiplier=multiplier, cap_s=cap_s)
    )
    if retry_after_s is not None:
        delay = max(delay, min(max(retry_after_s, 0.0), cap_s))
    return delay
