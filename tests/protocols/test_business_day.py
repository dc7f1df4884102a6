"""The business date of an instant: cutover time, time zone, the cutover edge and DST.

Zone rules from the IANA tz database (as Python's zoneinfo reads it): Asia/Shanghai has had no
DST since 1991 (UTC+8); Europe/Berlin springs forward on 2026-03-29 at 02:00 CET to 03:00 CEST
and falls back on 2026-10-25 at 03:00 CEST to 02:00 CET (EU rule: last Sunday, 01:00 UTC).
"""

from __future__ import annotations

import datetime as dt

import pytest

from protocols.business_day import (
    BusinessCalendar,
    BusinessDayError,
    parse_cutover,
    settlement_mmdd,
)

UTC = dt.UTC
D = dt.date


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def test_an_evening_cutover_in_shanghai_moves_the_date_at_23_00_local() -> None:
    cal = BusinessCalendar.of("23:00", "Asia/Shanghai")
    # 23:00 in Shanghai is 15:00 UTC.
    assert cal.business_date(utc(2026, 12, 7, 14, 59, 59, 999999)) == D(2026, 12, 7)
    assert cal.business_date(utc(2026, 12, 7, 15, 0, 0)) == D(2026, 12, 8)
    assert cal.business_date(utc(2026, 12, 7, 23, 0)) == D(2026, 12, 8)  # 07:00 on the 8th
    assert cal.business_date(utc(2026, 12, 8, 14, 59)) == D(2026, 12, 8)
    assert cal.business_date(utc(2026, 12, 8, 15, 0)) == D(2026, 12, 9)
    assert cal.next_cutover(utc(2026, 12, 7, 12, 0)) == utc(2026, 12, 7, 15, 0)
    assert cal.next_cutover(utc(2026, 12, 7, 15, 0)) == utc(2026, 12, 8, 15, 0)


def test_the_zone_decides_not_utc() -> None:
    # 16:30 UTC on 7 December is 00:30 on the 8th in Shanghai: a midnight cutover there says
    # the 8th, the same one in UTC the 7th.
    moment = utc(2026, 12, 7, 16, 30)
    assert BusinessCalendar.of("00:00", "Asia/Shanghai").business_date(moment) == D(2026, 12, 8)
    assert BusinessCalendar.of("00:00", "UTC").business_date(moment) == D(2026, 12, 7)


def test_a_morning_cutover_keeps_the_night_on_the_day_before() -> None:
    cal = BusinessCalendar.of("02:00", "UTC")
    assert cal.business_date(utc(2026, 12, 8, 1, 59, 59)) == D(2026, 12, 7)
    assert cal.business_date(utc(2026, 12, 8, 2, 0)) == D(2026, 12, 8)
    assert cal.next_cutover(utc(2026, 12, 8, 1, 0)) == utc(2026, 12, 8, 2, 0)


def test_the_default_is_the_utc_calendar_date() -> None:
    cal = BusinessCalendar.of()
    assert cal.business_date(utc(2026, 12, 7, 23, 59, 59, 999999)) == D(2026, 12, 7)
    assert cal.business_date(utc(2026, 12, 8, 0, 0)) == D(2026, 12, 8)
    assert cal.next_cutover(utc(2026, 12, 7, 23, 59)) == utc(2026, 12, 8)


def test_an_aware_instant_in_another_offset_is_the_same_instant() -> None:
    cal = BusinessCalendar.of("23:00", "Asia/Shanghai")
    plus8 = dt.timezone(dt.timedelta(hours=8))
    assert cal.business_date(dt.datetime(2026, 12, 7, 23, 0, tzinfo=plus8)) == D(2026, 12, 8)
    with pytest.raises(BusinessDayError):
        cal.business_date(dt.datetime(2026, 12, 7, 23, 0))


def test_a_cutover_the_clocks_skip_happens_when_they_jump() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens.
    cal = BusinessCalendar.of("02:30", "Europe/Berlin")
    assert cal.cutover_instant(D(2026, 3, 29)) == utc(2026, 3, 29, 1, 0)
    assert cal.business_date(utc(2026, 3, 29, 0, 59, 59)) == D(2026, 3, 28)
    assert cal.business_date(utc(2026, 3, 29, 1, 0)) == D(2026, 3, 29)
    # The day before and after: 02:30 local as usual (CET 01:30 UTC, CEST 00:30 UTC).
    assert cal.cutover_instant(D(2026, 3, 28)) == utc(2026, 3, 28, 1, 30)
    assert cal.cutover_instant(D(2026, 3, 30)) == utc(2026, 3, 30, 0, 30)


def test_a_cutover_the_clocks_repeat_happens_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC); 02:30 happens twice,
    # at 00:30 UTC (CEST) and 01:30 UTC (CET). The first one is the cutover.
    cal = BusinessCalendar.of("02:30", "Europe/Berlin")
    assert cal.cutover_instant(D(2026, 10, 25)) == utc(2026, 10, 25, 0, 30)
    assert cal.business_date(utc(2026, 10, 25, 0, 29, 59)) == D(2026, 10, 24)
    assert cal.business_date(utc(2026, 10, 25, 0, 30)) == D(2026, 10, 25)
    # 02:10 CET, wall time before 02:30 again: the date does not go back.
    assert cal.business_date(utc(2026, 10, 25, 1, 10)) == D(2026, 10, 25)
    assert cal.business_date(utc(2026, 10, 25, 1, 40)) == D(2026, 10, 25)


def test_an_evening_cutover_over_dst_makes_a_23_and_a_25_hour_business_day() -> None:
    cal = BusinessCalendar.of("23:00", "Europe/Berlin")
    start, end, day = cal.span(utc(2026, 3, 29, 12, 0))
    assert day == D(2026, 3, 29)
    assert (start, end) == (utc(2026, 3, 28, 22, 0), utc(2026, 3, 29, 21, 0))
    start, end, day = cal.span(utc(2026, 10, 25, 12, 0))
    assert day == D(2026, 10, 25)
    assert end - start == dt.timedelta(hours=25)


@pytest.mark.parametrize(
    ("cutover", "zone", "first"),
    [
        ("02:30", "Europe/Berlin", utc(2026, 3, 27)),
        ("02:30", "Europe/Berlin", utc(2026, 10, 23)),
        ("23:00", "Europe/Berlin", utc(2026, 10, 23)),
        ("01:30", "America/New_York", utc(2026, 11, 1)),
        ("23:00", "Asia/Shanghai", utc(2026, 12, 6)),
        ("12:00", "Australia/Lord_Howe", utc(2026, 4, 3)),  # a 30-minute DST shift
    ],
)
def test_every_minute_of_four_days_the_date_never_goes_back_and_moves_only_at_cutover(
    cutover: str, zone: str, first: dt.datetime
) -> None:
    cal = BusinessCalendar.of(cutover, zone)
    fresh = BusinessCalendar.of(cutover, zone)  # no cached span: the slow path agrees
    previous: dt.date | None = None
    for minute in range(0, 4 * 24 * 60, 1):
        moment = first + dt.timedelta(minutes=minute)
        day = cal.business_date(moment)
        assert day == fresh.span(moment)[2]
        if previous is not None and day != previous:
            assert day == previous + dt.timedelta(days=1)
            assert cal.span(moment)[0] == moment  # changes exactly at a cutover instant
        previous = day


def test_settlement_date_is_mmdd() -> None:
    assert settlement_mmdd(D(2026, 1, 5)) == "0105"
    assert settlement_mmdd(D(2026, 12, 31)) == "1231"


@pytest.mark.parametrize("text", ["24:00", "7:00", "07:60", "ab:cd", "0700", "07:00:00", ""])
def test_a_bad_cutover_time_is_refused(text: str) -> None:
    with pytest.raises(BusinessDayError):
        parse_cutover(text)


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(BusinessDayError, match="Mars/Olympus"):
        BusinessCalendar.of("23:00", "Mars/Olympus")
