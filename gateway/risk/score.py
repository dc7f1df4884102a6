"""Risk score: points of the signals that fired, summed and capped at 100.

Signals (each reported with its measured value and threshold):
- ``amount_deviation``: (amount - mean) / max(std, floor) of the card's approved amounts;
- ``new_country``: the merchant's country never had an approval on this card and is not the
  card's home country;
- ``night_time``: local hour in [night_start_hour, night_end_hour) of the configured zone;
- ``velocity_attempts``: attempts in the velocity window (this one included);
- ``mcc_risk``: points from the MCC risk table.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.risk.config import ScoreConfig
from gateway.risk.counters import ReserveOutcome
from gateway.risk.model import RiskInput, RuleHit


def _signal(
    name: str, value: int | float | str, threshold: int | float | str, points: int
) -> RuleHit:
    return RuleHit(name, "signal", "signal", value, threshold, None, points)


def is_night(hour: int, start: int, end: int) -> bool:
    if start <= end:
        return start <= hour < end
    return hour >= start or hour < end  # wraps midnight, e.g. 22-6


class Scorer:
    def __init__(self, config: ScoreConfig, tz: ZoneInfo) -> None:
        self.config = config
        self.tz = tz
        # per-configuration work done once; a signal with no points is never reported
        self._std_floor = float(config.amount_std_floor)
        self._night_hours = frozenset(
            h for h in range(24) if is_night(h, config.night_start_hour, config.night_end_hour)
        )
        self._night_window = f"{config.night_start_hour:02d}-{config.night_end_hour:02d}"
        self._mcc_points = {mcc: p for mcc, p in config.mcc_points.items() if p > 0}
        # Local time of the last second seen: offsets and zone transitions are whole seconds,
        # so hour and minute are the same for every instant of one UTC second.
        self._second: tuple[float, datetime | None] = (-1.0, None)

    def signals(
        self,
        inp: RiskInput,
        outcome: ReserveOutcome,
        ts: float | None = None,
        amount: int | None = None,
    ) -> tuple[list[RuleHit], int]:
        """Signals that fired and the score; ``ts`` is ``inp.now.timestamp()`` when known,
        ``amount`` the request's in the limit currency (the profile's unit; None: inp's)."""
        cfg = self.config
        hits: list[RuleHit] = []
        points = 0
        profile = outcome.profile
        if profile.n >= cfg.amount_min_samples:
            spread = max(math.sqrt(max(profile.var, 0.0)), self._std_floor)
            z = ((inp.amount if amount is None else amount) - profile.mean) / spread
            if z >= cfg.amount_z and cfg.amount_points > 0:
                hits.append(
                    _signal("amount_deviation", round(z, 2), cfg.amount_z, cfg.amount_points)
                )
                points += cfg.amount_points
        home = inp.card_country
        if (
            not outcome.country_known
            and inp.merchant_country != home
            and (profile.n > 0 or home is not None)
            and cfg.new_country_points > 0
        ):
            hits.append(
                _signal("new_country", inp.merchant_country, "known", cfg.new_country_points)
            )
            points += cfg.new_country_points
        if cfg.night_points > 0:
            second = (inp.now.timestamp() if ts is None else ts) // 1
            cached, local = self._second
            if cached != second or local is None:
                local = inp.now.astimezone(self.tz)
                self._second = (second, local)
            if local.hour in self._night_hours:
                hits.append(
                    _signal(
                        "night_time", local.strftime("%H:%M"), self._night_window, cfg.night_points
                    )
                )
                points += cfg.night_points
        if outcome.attempts >= cfg.velocity_attempts and cfg.velocity_points > 0:
            hits.append(
                _signal(
                    "velocity_attempts",
                    outcome.attempts,
                    cfg.velocity_attempts,
                    cfg.velocity_points,
                )
            )
            points += cfg.velocity_points
        mcc_points = self._mcc_points.get(inp.mcc)
        if mcc_points is not None:
            hits.append(_signal("mcc_risk", inp.mcc, "mcc_points", mcc_points))
            points += mcc_points
        return hits, min(100, points)
