"""The business day: which settlement date an instant belongs to, given a cutover time.

Pure (no clock: the caller passes the instant). A switch closes its business day at a cutover
time of its own time zone; what happens after it belongs to the next business date. The date a
business day is named after is the calendar day it mostly covers:

* an evening cutover (at or after 12:00, e.g. ``23:00``): from 23:00 on 7 December the business
  date is 8 December, until 23:00 on 8 December;
* a morning cutover (before 12:00, e.g. ``02:00``): until 02:00 on 8 December the business
  date is still 7 December;
* ``00:00``: the business date is the calendar date of the zone.

Daylight saving time: the cutover instant of a local day is the first instant whose wall-clock
time on that day is at or after the cutover time. A cutover time the clocks skip (spring
forward) happens when they jump; one they repeat (fall back) happens at its first occurrence,
never twice: the business date never goes back.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocols.errors import LocalProtocolError

_NOON = dt.time(12, 0)


class BusinessDayError(LocalProtocolError):
    """A cutover time or time zone that cannot be used."""


def parse_cutover(text: str) -> dt.time:
    """``HH:MM`` (24 h) -> time; anything else is a :class:`BusinessDayError`."""
    if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
        raise BusinessDayError(f"cutover {text!r} is not HH:MM")
    hour, minute = int(text[:2]), int(text[3:])
    if hour > 23 or minute > 59:
        raise BusinessDayError(f"cutover {text!r} is not a time of day (00:00-23:59)")
    return dt.time(hour, minute)


def load_zone(name: str) -> dt.tzinfo:
    """An IANA time zone by name (``Asia/Shanghai``...). ``UTC`` needs no tz database (the
    default must work on a host without one); the others come from the system's (or the
    ``tzdata`` package's)."""
    if name == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BusinessDayError(
            f"unknown time zone {name!r} (an IANA name, from the tz database)"
        ) from exc


def settlement_mmdd(day: dt.date) -> str:
    """Field 15 (settlement date, ``MMDD``)."""
    return f"{day.month:02d}{day.day:02d}"


class BusinessCalendar:
    """Business dates and cutover instants for one cutover time in one time zone.

    ``business_date`` is on every transaction's path: the current business day's span is kept,
    so an instant inside it costs two comparisons."""

    __slots__ = ("_evening", "_span", "cutover", "zone")

    def __init__(self, cutover: dt.time, zone: dt.tzinfo) -> None:
        self.cutover = cutover
        self.zone = zone
        self._evening = cutover >= _NOON
        self._span: tuple[dt.datetime, dt.datetime, dt.date] | None = None

    @classmethod
    def of(cls, cutover: str = "00:00", timezone: str = "UTC") -> BusinessCalendar:
        return cls(parse_cutover(cutover), load_zone(timezone))

    def cutover_instant(self, local_day: dt.date) -> dt.datetime:
        """The instant (UTC) the business day changes on ``local_day`` of the zone."""
        wall = dt.datetime.combine(local_day, self.cutover)
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(dt.UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == wall:
            return first  # exists (the first of two when repeated)
        # Skipped by a spring-forward: the first instant after it is the clocks' jump. fold=1
        # reads the wall time with the offset after the jump, an instant before it; fold=0
        # with the one before, an instant after it. The jump lies between: bisect seconds.
        bounds = sorted((wall.replace(tzinfo=self.zone, fold=1).astimezone(dt.UTC), first))
        low, high = int(bounds[0].timestamp()), int(bounds[1].timestamp())  # whole seconds
        while high - low > 1:  # low: before the jump; high: at or after it
            mid = (low + high) // 2
            if self._wall_reached(mid, wall):
                high = mid
            else:
                low = mid
        return dt.datetime.fromtimestamp(high, dt.UTC)

    def _wall_reached(self, second: int, wall: dt.datetime) -> bool:
        return dt.datetime.fromtimestamp(second, self.zone).replace(tzinfo=None) >= wall

    def _local_span(self, local_day: dt.date) -> tuple[dt.datetime, dt.datetime, dt.date]:
        """(start, end, business date) of the business day that ends on ``local_day``'s
        cutover (evening cutover) or starts at it (morning cutover)."""
        one = dt.timedelta(days=1)
        if self._evening:
            start = self.cutover_instant(local_day - one)
            return start, self.cutover_instant(local_day), local_day
        return self.cutover_instant(local_day), self.cutover_instant(local_day + one), local_day

    def span(self, moment: dt.datetime) -> tuple[dt.datetime, dt.datetime, dt.date]:
        """(start, end, business date) of the business day holding ``moment`` (aware):
        ``start <= moment < end``, both UTC."""
        if moment.tzinfo is None:
            raise BusinessDayError("business date of a naive datetime")
        local_day = moment.astimezone(self.zone).date()
        for candidate in (local_day, local_day + dt.timedelta(days=1), local_day - dt.timedelta(1)):
            start, end, day = self._local_span(candidate)
            if start <= moment < end:
                return start, end, day
        raise BusinessDayError(f"no business day holds {moment.isoformat()}")  # pragma: no cover

    def business_date(self, moment: dt.datetime) -> dt.date:
        """The business (settlement) date of ``moment`` (aware)."""
        span = self._span
        try:
            if span is not None and span[0] <= moment < span[1]:
                return span[2]
        except TypeError:  # naive: the slow path says so
            pass
        span = self._span = self.span(moment)
        return span[2]

    def next_cutover(self, moment: dt.datetime) -> dt.datetime:
        """The first cutover instant after ``moment`` (aware; UTC)."""
        return self.span(moment)[1]
