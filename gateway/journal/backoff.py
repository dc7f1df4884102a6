"""Retry schedule of store-and-forward advices (pure: the caller passes ``now`` and the
random draw, so tests are exact)."""

from __future__ import annotations

from datetime import datetime, timedelta


def backoff_delay(
    attempts: int,
    *,
    base: float = 1.0,
    factor: float = 2.0,
    cap: float = 300.0,
    jitter: float = 0.1,
    draw: float = 0.5,
) -> timedelta:
    """Delay before attempt ``attempts + 1`` after ``attempts`` failed ones.

    ``base * factor**(attempts-1)`` seconds, at most ``cap``, spread by ``±jitter`` (a
    fraction) using ``draw`` in [0, 1) (0.5 = no spread) so a restarted switch does not resend
    every advice of an issuer in the same instant.
    """
    if attempts < 1:
        return timedelta(0)
    if not 0.0 <= draw < 1.0 or not 0.0 <= jitter < 1.0:
        raise ValueError("draw must be in [0, 1) and jitter in [0, 1)")
    exponent = min(attempts - 1, 64)  # no float overflow on huge attempt counts
    seconds = min(cap, base * factor**exponent)
    seconds *= 1.0 + jitter * (2.0 * draw - 1.0)
    return timedelta(seconds=max(0.0, seconds))


def next_attempt(
    now: datetime,
    attempts: int,
    *,
    base: float = 1.0,
    factor: float = 2.0,
    cap: float = 300.0,
    jitter: float = 0.1,
    draw: float = 0.5,
) -> datetime:
    """When to try again after ``attempts`` failed attempts (see :func:`backoff_delay`)."""
    delay = backoff_delay(attempts, base=base, factor=factor, cap=cap, jitter=jitter, draw=draw)
    return now + delay
