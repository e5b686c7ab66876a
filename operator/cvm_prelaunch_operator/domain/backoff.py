"""Bounded, jittered exponential backoff that honours the server's Retry-After."""

from __future__ import annotations

import random

BASE_SECONDS = 2.0
CAP_SECONDS = 300.0

_RNG = random.Random()  # jitter needs no cryptographic randomness


def backoff_delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    base: float = BASE_SECONDS,
    cap: float = CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (1-based).

    Equal jitter: half the exponential step is fixed, half random, so retries of many resources that
    failed together spread out without ever retrying immediately. Retry-After is a floor, capped too.
    """
    attempt = max(1, attempt)
    step = min(cap, base * 2.0 ** min(attempt - 1, 30))
    jitter = (rng or _RNG).uniform(0, step / 2)
    delay = step / 2 + jitter
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay
