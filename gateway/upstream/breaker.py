"""Circuit breaker of one issuer: after N consecutive failures, stop sending for a cool-down.

Pure state machine (the caller passes ``now`` from ``anyio.current_time()``):

* ``closed``: requests go to the issuer; ``threshold`` consecutive failures (timeouts,
  unavailable links) open it.
* ``open``: nothing is sent (stand-in answers) until ``cooldown`` seconds have passed.
* ``half_open``: one request probes the issuer; its success closes the breaker, its failure
  opens it again for another cool-down. Other requests meanwhile are treated as open.
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown: float) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("threshold must be >= 1 and cooldown > 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        """Consecutive failures since the last success."""
        self.opened_at: float | None = None
        self._probing = False
        self.opens = 0
        """Times the breaker opened (for status and tests)."""

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.cooldown:
            return "open"
        return "half_open"

    def allow(self, now: float) -> bool:
        """May a request go to the issuer now? In half-open, only the first one (the probe)."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self._probing or (self.opened_at is None and self.failures >= self.threshold):
            self.opens += 1
            self.opened_at = now
        self._probing = False

    def release_probe(self) -> None:
        """The probe ended without telling anything about the issuer (e.g. a local decline)."""
        self._probing = False
