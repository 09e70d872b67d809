"""Cron expressions and schedule slots: a five-field cron (or @daily, ...) parsed and checked, the latest tick
at or before a time (the slot a retrain runs for), the next tick, and a slot's name, YYYY-MM-DDTHH:MMZ (UTC).

Used by `deepgen schedule` (deepgen.schedule writes the files), `deepgen submit --slot`, jobs/retrain.py and
`python -m deepgen.schedule slot` in a pod.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from deepgen.errors import DeepgenError


class ScheduleError(DeepgenError):
    """A cron expression, slot or schedule setting is invalid."""


FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")

_BOUNDS = {"minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12), "day-of-week": (0, 7)}

_NAMES = {
    "month": {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m},
    "day-of-week": {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6},
}

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}

_DAYS_IN_MONTH = {m: (29 if m == 2 else calendar.monthrange(2001, m)[1]) for m in range(1, 13)}

_SEARCH_DAYS = 366 * 9  # Feb 29 recurs within 8 years; everything else that can match, within one


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression (`parse_cron`)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]      # 0 = Sunday
    dom_restricted: bool
    dow_restricted: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        if self.dom_restricted and self.dow_restricted:
            return dom or dow
        return dom and dow

    def matches(self, when: datetime) -> bool:
        """True if the minute of `when` is a scheduled time (seconds are ignored)."""
        return when.minute in self.minutes and when.hour in self.hours and self.day_matches(when.date())


def _err(expr: str, field: str, text: str, why: str) -> ScheduleError:
    lo, hi = _BOUNDS[field]
    return ScheduleError(f"cron '{expr}': {field} field '{text}': {why} (allowed {lo}-{hi}"
                         + (", or names like jan/mon" if field in _NAMES else "") + ")")


def _value(expr: str, field: str, whole: str, text: str) -> int:
    names = _NAMES.get(field, {})
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise _err(expr, field, whole, f"'{text}' is not a number")
    value = int(text)
    lo, hi = _BOUNDS[field]
    if not lo <= value <= hi:
        raise _err(expr, field, whole, f"{value} is out of range")
    return value


def _parse_field(expr: str, field: str, text: str) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it is unrestricted (a bare `*`, as cron's star flag)."""
    lo, hi = _BOUNDS[field]
    values: set[int] = set()
    star = False
    for item in text.split(","):
        if not item:
            raise _err(expr, field, text, "empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _err(expr, field, text, f"step '{step_text}' must be a whole number >= 1")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
            star = star or step == 1
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _value(expr, field, text, a), _value(expr, field, text, b)
            if start > end:
                raise _err(expr, field, text, f"range {a}-{b} runs backwards")
        else:
            start = _value(expr, field, text, base)
            end = hi if slash else start  # "5/10" means 5-max/10
        values.update(range(start, end + 1, step))
    if field == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values), star


def parse_cron(expr: str) -> Cron:
    """Parse a five-field cron expression (or an @macro); a `ScheduleError` names the bad field."""
    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError("cron expression is empty; expected 5 fields: " + " ".join(FIELDS))
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ScheduleError(f"cron '{expr}': unknown macro; use one of {', '.join(MACROS)} or 5 fields")
        text = MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(f"cron '{expr}': expected 5 fields ({' '.join(FIELDS)}), got {len(parts)}")
    parsed = {field: _parse_field(expr, field, part) for field, part in zip(FIELDS, parts)}
    cron = Cron(
        expr=expr.strip(),
        minutes=parsed["minute"][0], hours=parsed["hour"][0], days=parsed["day-of-month"][0],
        months=parsed["month"][0], weekdays=parsed["day-of-week"][0],
        dom_restricted=not parsed["day-of-month"][1], dow_restricted=not parsed["day-of-week"][1],
    )
    only_dom_decides = cron.dom_restricted and not cron.dow_restricted
    if only_dom_decides and not any(d <= _DAYS_IN_MONTH[m] for m in cron.months for d in cron.days):
        raise _err(expr, "day-of-month", parts[2],
                   f"never falls in month(s) {','.join(map(str, sorted(cron.months)))}")
    return cron


def validate_cron(expr: str) -> str:
    """The expression, stripped, if it is valid (else a `ScheduleError` with one line naming the field), in
    the grammar every target reads. Kubernetes and KubeRay parse schedules with robfig/cron, whose
    day-of-week runs 0-6: a 7 (Sunday, as cron allows) is refused there, and an `N/step` day-of-week stops
    at 6 instead of 7, so such a field is written as the list of days it means here."""
    c = parse_cron(expr)
    fields = MACROS.get(c.expr.lower(), c.expr).split()
    if c.dow_restricted and ("7" in fields[4] or "/" in fields[4]):
        return " ".join([*fields[:4], ",".join(map(str, sorted(c.weekdays)))])
    return c.expr


def _as_cron(cron: str | Cron) -> Cron:
    return cron if isinstance(cron, Cron) else parse_cron(cron)


def slot_for(cron: str | Cron, now: datetime) -> datetime:
    """The latest scheduled time at or before `now` (minute resolution, in `now`'s own time zone).

    `now` may be naive or aware; the result carries the same tzinfo. Wall-clock arithmetic: across a
    daylight-saving change a local schedule can skip or repeat an hour, as cron does.
    """
    c = _as_cron(cron)
    now = now.replace(second=0, microsecond=0)
    hours_desc = sorted(c.hours, reverse=True)
    minutes_desc = sorted(c.minutes, reverse=True)
    day = now.date()
    for back in range(_SEARCH_DAYS):
        if c.day_matches(day):
            for hour in hours_desc:
                if back == 0 and hour > now.hour:
                    continue
                for minute in minutes_desc:
                    if back == 0 and hour == now.hour and minute > now.minute:
                        continue
                    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=now.tzinfo)
        day -= timedelta(days=1)
    raise ScheduleError(f"cron '{c.expr}': no scheduled time in the {_SEARCH_DAYS} days before {now:%Y-%m-%d}")


def next_after(cron: str | Cron, after: datetime) -> datetime:
    """The first scheduled time strictly after `after` (handy for showing when a schedule fires next)."""
    c = _as_cron(cron)
    start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = start.date()
    for ahead in range(_SEARCH_DAYS):
        if c.day_matches(day):
            for hour in sorted(c.hours):
                if ahead == 0 and hour < start.hour:
                    continue
                for minute in sorted(c.minutes):
                    if ahead == 0 and hour == start.hour and minute < start.minute:
                        continue
                    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=after.tzinfo)
        day += timedelta(days=1)
    raise ScheduleError(f"cron '{c.expr}': no scheduled time in the {_SEARCH_DAYS} days after {after:%Y-%m-%d}")


SLOT_FORMAT = "%Y-%m-%dT%H:%MZ"

_SLOT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}Z$")


def format_slot(when: datetime) -> str:
    """`2026-11-27T03:00Z`: UTC, minute resolution. A naive datetime is taken to be UTC already."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime(SLOT_FORMAT)


def parse_slot(text: str) -> datetime:
    """The aware UTC datetime of a slot string such as `2026-11-27T03:00Z`."""
    if not _SLOT_RE.match(text or ""):
        raise ScheduleError(f"slot '{text}': expected YYYY-MM-DDTHH:MMZ (UTC), e.g. 2026-11-27T03:00Z")
    try:
        return datetime.strptime(text, SLOT_FORMAT).replace(tzinfo=UTC)
    except ValueError as e:
        raise ScheduleError(f"slot '{text}': {e}") from None


def current_slot(cron: str | Cron, now: datetime | None = None, local: bool = False) -> str:
    """The slot of the tick that fired at or before `now` (default: the current time), as a string.

    The schedule is read in UTC (as a Kubernetes CronJob with `timeZone: Etc/UTC` and a UTC KubeRay
    operator do), or in this machine's local time with `local=True` (as crontab does); either way the
    slot is written in UTC.
    """
    if now is None:
        now = datetime.now(UTC)
    if local:
        now = now.astimezone()  # the machine's local zone
    elif now.tzinfo is not None:
        now = now.astimezone(UTC)
    return format_slot(slot_for(cron, now))
