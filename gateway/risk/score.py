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
from zoneinfo import ZoneInfo

from gateway.risk.config import ScoreConfig
from gateway.risk.counters import ReserveOutcome
from gateway.risk.model import RiskInput, RuleHit


def _signal(
    name: str, value: int | float | str, threshold: int | float | str, points: int
) -> RuleHit:
    return RuleHit(
        name=name, kind="signal", action="signal", value=value, threshold=threshold, points=points
    )


def is_night(hour: int, start: int, end: int) -> bool:
    if start <= end:
        return start <= hour < end
    return hour >= start or hour < end  # wraps midnight, e.g. 22-6


class Scorer:
    def __init__(self, config: ScoreConfig, tz: ZoneInfo) -> None:
        self.config = config
        self.tz = tz

    def signals(self, inp: RiskInput, outcome: ReserveOutcome) -> tuple[list[RuleHit], int]:
        cfg = self.config
        hits: list[RuleHit] = []
        profile = outcome.profile
        if profile.n >= cfg.amount_min_samples:
            spread = max(math.sqrt(max(profile.var, 0.0)), float(cfg.amount_std_floor))
            z = (inp.amount - profile.mean) / spread
            if z >= cfg.amount_z:
                hits.append(
                    _signal("amount_deviation", round(z, 2), cfg.amount_z, cfg.amount_points)
                )
        home = inp.card_country
        has_history = profile.n > 0
        if (
            not outcome.country_known
            and inp.merchant_country != home
            and (has_history or home is not None)
        ):
            hits.append(
                _signal("new_country", inp.merchant_country, "known", cfg.new_country_points)
            )
        local = inp.now.astimezone(self.tz)
        if is_night(local.hour, cfg.night_start_hour, cfg.night_end_hour):
            window = f"{cfg.night_start_hour:02d}-{cfg.night_end_hour:02d}"
            hits.append(_signal("night_time", local.strftime("%H:%M"), window, cfg.night_points))
        if outcome.attempts >= cfg.velocity_attempts:
            hits.append(
                _signal(
                    "velocity_attempts",
                    outcome.attempts,
                    cfg.velocity_attempts,
                    cfg.velocity_points,
                )
            )
        mcc_points = cfg.mcc_points.get(inp.mcc, 0)
        if mcc_points > 0:
            hits.append(_signal("mcc_risk", inp.mcc, "mcc_points", mcc_points))
        hits = [h for h in hits if h.points > 0]
        return hits, min(100, sum(h.points for h in hits))
