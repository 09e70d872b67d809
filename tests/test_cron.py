"""Cron expressions and schedule slots (deepgen.cron): parsing, errors that name the field, the slot of a
time, the next tick. (Moved from tests/test_schedule.py with the code.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from deepgen.cron import (
    ScheduleError,
    current_slot,
    format_slot,
    next_after,
    parse_cron,
    parse_slot,
    slot_for,
    validate_cron,
)
from deepgen.errors import DeepgenError


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- cron parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, field", [
    ("0 3 * *", None),                 # field count
    ("0 3 * * * *", None),
    ("60 3 * * *", "minute"),
    ("0 24 * * *", "hour"),
    ("0 3 0 * *", "day-of-month"),
    ("0 3 * 13 *", "month"),
    ("0 3 * * 8", "day-of-week"),
    ("*/0 * * * *", "minute"),
    ("0 5-1 * * *", "hour"),
    ("0 3 * foo *", "month"),
    ("0 3 31 2 *", "day-of-month"),    # never happens
    ("0 3 30 2,4 *", None),            # fine: April has a 30th (checked below)
    ("0,,5 * * * *", "minute"),
    ("a * * * *", "minute"),
])
def test_bad_cron_expressions_name_the_field_in_one_line(expr, field):
    if expr == "0 3 30 2,4 *":
        assert validate_cron(expr) == expr
        return
    with pytest.raises(ScheduleError) as e:
        parse_cron(expr)
    message = str(e.value)
    assert "\n" not in message and expr in message
    if field:
        assert f"{field} field" in message
    else:
        assert "expected 5 fields" in message


def test_schedule_errors_are_deepgen_errors_so_the_cli_prints_them():
    assert issubclass(ScheduleError, DeepgenError)
    with pytest.raises(ScheduleError, match="empty"):
        parse_cron("  ")
    with pytest.raises(ScheduleError, match="unknown macro"):
        parse_cron("@sometimes")


def test_lists_ranges_steps_names_and_macros():
    c = parse_cron("5,10-20/5,*/30 8-18/2 * jan,JUL-sep mon-fri")
    assert c.minutes == {0, 5, 10, 15, 20, 30}
    assert c.hours == {8, 10, 12, 14, 16, 18}
    assert c.months == {1, 7, 8, 9}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}       # N/step runs to the top of the range
    assert parse_cron("0 0 * * 7").weekdays == {0}                  # 7 is Sunday too
    assert parse_cron("0 0 * * 3/4").weekdays == {3, 0}             # 3 and 7
    daily = parse_cron("@daily")
    assert (daily.minutes, daily.hours, daily.expr) == ({0}, {0}, "@daily")
    assert parse_cron("@hourly").minutes == {0} and len(parse_cron("@hourly").hours) == 24


# --- slots ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cron, now, slot", [
    # daily at 03:00
    ("0 3 * * *", "2026-11-27T03:00:00", "2026-11-27T03:00"),
    ("0 3 * * *", "2026-11-27T03:00:59", "2026-11-27T03:00"),
    ("0 3 * * *", "2026-11-27T02:59:59", "2026-11-26T03:00"),
    ("0 3 * * *", "2026-11-27T23:10:00", "2026-11-27T03:00"),
    # every 15 minutes
    ("*/15 * * * *", "2026-11-27T10:14:59", "2026-11-27T10:00"),
    ("*/15 * * * *", "2026-11-27T10:15:00", "2026-11-27T10:15"),
    ("*/15 * * * *", "2026-11-27T00:07:00", "2026-11-27T00:00"),
    ("*/15 * * * *", "2026-01-01T00:01:00", "2026-01-01T00:00"),
    # weekdays at 09:00 (2026-11-27 is a Friday)
    ("0 9 * * 1-5", "2026-11-27T09:30:00", "2026-11-27T09:00"),
    ("0 9 * * 1-5", "2026-11-29T12:00:00", "2026-11-27T09:00"),    # Sunday -> Friday
    ("0 9 * * 1-5", "2026-11-30T08:59:00", "2026-11-27T09:00"),    # Monday before nine -> Friday
    ("0 9 * * mon-fri", "2026-11-30T09:00:00", "2026-11-30T09:00"),
    # month and year boundaries
    ("0 0 1 * *", "2026-03-01T00:00:00", "2026-03-01T00:00"),
    ("0 0 1 * *", "2026-02-28T23:59:00", "2026-02-01T00:00"),
    ("30 23 31 * *", "2026-05-15T12:00:00", "2026-03-31T23:30"),   # April has no 31st
    ("0 0 1 1 *", "2026-01-01T00:00:00", "2026-01-01T00:00"),
    ("59 23 31 12 *", "2026-01-01T00:00:00", "2025-12-31T23:59"),
    ("0 0 29 2 *", "2026-05-01T00:00:00", "2024-02-29T00:00"),     # leap day, two years back
    ("0 12 28-31 * *", "2026-03-01T11:00:00", "2026-02-28T12:00"),
    # day-of-month OR day-of-week when both are restricted (cron semantics)
    ("0 0 13 * 5", "2026-11-25T00:00:00", "2026-11-20T00:00"),     # Friday 20th beats the 13th
    ("0 0 13 * 5", "2026-11-14T00:00:00", "2026-11-13T00:00"),
    # a stepped star counts as restricted (as Kubernetes' and KubeRay's cron library reads it)
    ("0 0 */10 * 1", "2026-11-24T00:00:00", "2026-11-23T00:00"),   # a Monday, not a 1st/11th/21st
])
def test_slot_is_the_latest_scheduled_time_at_or_before_now(cron, now, slot):
    got = slot_for(cron, dt(now))
    assert got.strftime("%Y-%m-%dT%H:%M") == slot
    assert parse_cron(cron).matches(got)
    # and nothing later up to now matches
    t = got + timedelta(minutes=1)
    while t <= dt(now):
        assert not parse_cron(cron).matches(t), t
        t += timedelta(minutes=1)
        if t - got > timedelta(days=3):
            break


def test_slot_keeps_the_time_zone_and_formats_in_utc():
    cet = timezone(timedelta(hours=1))
    got = slot_for("0 3 * * *", datetime(2026, 11, 27, 3, 30, tzinfo=cet))
    assert got == datetime(2026, 11, 27, 3, 0, tzinfo=cet)
    assert format_slot(got) == "2026-11-27T02:00Z"
    assert format_slot(datetime(2026, 11, 27, 3, 0)) == "2026-11-27T03:00Z"   # naive = UTC
    assert parse_slot("2026-11-27T03:00Z") == datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="YYYY-MM-DDTHH:MMZ"):
        parse_slot("2026-11-27 03:00")


def test_retries_and_late_starts_of_one_tick_share_its_slot():
    base = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    slots = {current_slot("0 3 * * *", base + timedelta(minutes=m)) for m in (0, 1, 59, 600, 1439)}
    assert slots == {"2026-11-27T03:00Z"}
    assert current_slot("0 3 * * *", base + timedelta(days=1)) == "2026-11-28T03:00Z"


def test_next_after_is_the_following_tick():
    assert next_after("0 3 * * *", dt("2026-11-27T03:00:00")) == dt("2026-11-28T03:00:00")
    assert next_after("*/15 * * * *", dt("2026-12-31T23:50:00")) == dt("2027-01-01T00:00:00")
    assert next_after("0 9 * * 1-5", dt("2026-11-27T09:00:00")) == dt("2026-11-30T09:00:00")
