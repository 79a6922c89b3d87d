"""Maintenance windows (pure): when upstream traffic and node pulls may start.

A window is written as `key=value` pairs separated by `;`, in the annotation
`pinsvc.io/window` of a PinnedImageSet or a MachineConfigPool (or pinctl's `--window`):

    start=2026-01-10T22:00:00Z; end=2026-01-11T04:00:00Z     # once (either bound may be left out)
    cron=0 22 * * 1-5; duration=4h                           # weekdays 22:00-02:00 UTC
    cron=30 1 * * 6; duration=2h30m; tz=Europe/Paris         # Saturdays 01:30-04:00, Paris time

`cron` is a standard 5-field expression (a sixth field, croniter's extension, gives seconds)
that opens the window, `duration` how long it stays open (`d`, `h`, `m`, `s` units), `tz` an
IANA time zone for the expression (default UTC). Cron expressions are read by croniter
(docs/warm.md says why that library). Several windows apply together: work may start only
while every one of them is open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

ANNOTATION = "pinsvc.io/window"
MAX_STEPS = 10_000
"""Openings looked at when combining windows or projecting an ETA (bounds every loop)."""
MAX_OVERLAPS = 500
"""Overlapping openings merged into one; more than that counts as always open."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_KEYS = ("start", "end", "cron", "duration", "tz")


@dataclass(frozen=True)
class Window:
    """One window: a single opening [start, end) (either bound may be None: unbounded), or
    openings at every `cron` match lasting `duration` seconds."""

    spec: str
    start: datetime | None = None
    end: datetime | None = None
    cron: str = ""
    duration: float = 0.0
    tz: str = "UTC"

    def opening(self, now: datetime) -> tuple[datetime, datetime | None] | None:
        """The opening `now` is in: (since, until; None = never closes), or None when closed."""
        if not self.cron:
            if (self.start is None or self.start <= now) and (self.end is None or now < self.end):
                return (self.start or now, self.end)
            return None
        local = now.astimezone(ZoneInfo(self.tz)).replace(microsecond=0) + timedelta(seconds=1)
        since = croniter(self.cron, local).get_prev(datetime)
        until = since + timedelta(seconds=self.duration)
        if now >= until:
            return None
        following = croniter(self.cron, since)
        for _ in range(MAX_OVERLAPS):  # openings that overlap make one longer opening
            start = following.get_next(datetime)
            if start > until:
                break
            until = max(until, start + timedelta(seconds=self.duration))
        else:
            return (since, None)  # openings overlap for ever: always open
        return (since, until)

    def next_open(self, now: datetime) -> datetime | None:
        """When it opens next after `now` (now when open), None when never again."""
        if self.opening(now) is not None:
            return now
        if not self.cron:
            return self.start if self.start is not None and now < self.start else None
        local = now.astimezone(ZoneInfo(self.tz))
        return croniter(self.cron, local).get_next(datetime)


@dataclass(frozen=True)
class Windows:
    """Windows that apply together (none: always open)."""

    windows: tuple[Window, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.windows)

    def __str__(self) -> str:
        return " and ".join(w.spec for w in self.windows) or "always open"

    def closes_at(self, now: datetime) -> datetime | None:
        """When the current opening ends (None: it never does). Only meaningful when open."""
        ends = [o[1] for o in (w.opening(now) for w in self.windows) if o is not None and o[1] is not None]
        return min(ends, default=None)

    def is_open(self, now: datetime) -> bool:
        return all(w.opening(now) is not None for w in self.windows)

    def next_open(self, now: datetime) -> datetime | None:
        """The first moment at or after `now` when every window is open; None: never."""
        t = now
        for _ in range(MAX_STEPS):
            later = [w.next_open(t) for w in self.windows if w.opening(t) is None]
            if not later:
                return t
            if any(when is None for when in later):
                return None
            t = max(later)  # type: ignore[type-var]
        return None

    def opened_at(self, now: datetime) -> datetime:
        """When the current opening of them all began (`now` for no window)."""
        starts = [o[0] for o in (w.opening(now) for w in self.windows) if o is not None]
        return max(starts, default=now)


def parse(spec: str) -> Window:
    """A Window from its text. Raises ValueError naming what is wrong and what is expected."""
    fields: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _KEYS:
            raise ValueError(f"window {spec!r}: {part!r} is not one of {', '.join(k + '=...' for k in _KEYS)}")
        if key in fields:
            raise ValueError(f"window {spec!r}: {key} given twice")
        fields[key] = value
    if "cron" in fields:
        return _recurring(spec, fields)
    if not fields.keys() & {"start", "end"} or fields.keys() - {"start", "end"}:
        raise ValueError(f"window {spec!r}: give start= and/or end= (RFC 3339 times), or cron= with duration=")
    start, end = (_time(spec, k, fields[k]) if k in fields else None for k in ("start", "end"))
    if start is not None and end is not None and end <= start:
        raise ValueError(f"window {spec!r}: end {fields['end']} is not after start {fields['start']}")
    return Window(spec, start=start, end=end)


def parse_all(specs: Iterable[str]) -> Windows:
    """Windows from several texts (empty ones ignored); raises ValueError like `parse`."""
    return Windows(tuple(parse(s) for s in dict.fromkeys(s.strip() for s in specs) if s))


def parse_duration(text: str) -> float:
    """Seconds of `4h`, `1h30m`, `90s`, `2d` (units d h m s, at least one). Raises ValueError."""
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"duration {text!r}: write it as e.g. 4h, 1h30m, 90s or 2d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _recurring(spec: str, fields: dict[str, str]) -> Window:
    if fields.keys() & {"start", "end"} or "duration" not in fields:
        raise ValueError(f"window {spec!r}: cron= needs duration= (e.g. 4h) and takes no start= or end=")
    cron = " ".join(fields["cron"].split())
    if len(cron.split()) not in (5, 6) or not croniter.is_valid(cron):
        raise ValueError(f"window {spec!r}: cron {fields['cron']!r} is not a 5-field cron expression "
                         f"(minute hour day-of-month month day-of-week), e.g. '0 22 * * *'")
    duration = parse_duration(fields["duration"])
    if duration <= 0:
        raise ValueError(f"window {spec!r}: duration must be more than 0")
    tz = fields.get("tz", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"window {spec!r}: tz {tz!r} is not an IANA time zone (e.g. UTC, Europe/Paris)") from None
    return Window(spec, cron=cron, duration=duration, tz=tz)


def _time(spec: str, key: str, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"window {spec!r}: {key} {text!r} is not an RFC 3339 time with its offset "
                         f"(e.g. 2026-01-10T22:00:00Z)")
    return when.astimezone(timezone.utc)
