"""Maintenance windows (pinsvc/warm/window.py): parsing, openings, combinations."""

from datetime import datetime, timedelta, timezone

import pytest

from pinsvc.warm.window import Windows, parse, parse_all, parse_duration

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_start_end_window_is_open_between_its_bounds_only():
    w = parse("start=2026-01-10T22:00:00Z; end=2026-01-11T04:00:00Z")
    assert w.opening(at("2026-01-10T21:59:59Z")) is None
    assert w.opening(at("2026-01-10T22:00:00Z")) == (at("2026-01-10T22:00:00Z"), at("2026-01-11T04:00:00Z"))
    assert w.opening(at("2026-01-11T04:00:00Z")) is None
    assert w.next_open(at("2026-01-10T12:00:00Z")) == at("2026-01-10T22:00:00Z")
    assert w.next_open(at("2026-01-11T05:00:00Z")) is None, "a one-off window never opens again"


def test_offsets_are_honoured_and_one_bound_is_enough():
    w = parse("start=2026-01-10T23:00:00+01:00")
    assert w.opening(at("2026-01-10T21:59:00Z")) is None
    assert w.opening(at("2026-01-10T22:00:00Z")) == (at("2026-01-10T22:00:00Z"), None)
    assert parse("end=2026-01-10T22:00:00Z").opening(at("2020-01-01T00:00:00Z")) is not None


def test_a_cron_window_opens_at_each_match_for_its_duration():
    w = parse("cron=0 22 * * *; duration=4h")
    assert w.opening(at("2026-01-10T23:30:00Z")) == (at("2026-01-10T22:00:00Z"), at("2026-01-11T02:00:00Z"))
    assert w.opening(at("2026-01-11T01:59:59Z")) is not None
    assert w.opening(at("2026-01-11T02:00:00Z")) is None
    assert w.next_open(at("2026-01-11T02:00:00Z")) == at("2026-01-11T22:00:00Z")
    assert w.opening(at("2026-01-10T22:00:00Z"))[0] == at("2026-01-10T22:00:00Z"), "open at the match itself"


def test_a_cron_window_in_a_time_zone():
    w = parse("cron=30 1 * * 6; duration=2h30m; tz=Europe/Paris")  # Saturday 01:30 Paris = 00:30 UTC in winter
    assert w.opening(at("2026-01-10T00:29:00Z")) is None
    since, until = w.opening(at("2026-01-10T00:30:00Z"))
    assert (since, until) == (at("2026-01-10T00:30:00Z"), at("2026-01-10T03:00:00Z"))


def test_overlapping_openings_make_one_longer_opening_and_seconds_work():
    w = parse("cron=* * * * * */10; duration=15s")  # every 10 s for 15 s: always open
    assert w.opening(at("2026-01-10T00:00:05Z"))[1] is None
    w = parse("cron=* * * * * */10; duration=4s")
    assert w.opening(at("2026-01-10T00:00:03Z")) is not None
    assert w.opening(at("2026-01-10T00:00:05Z")) is None
    assert w.next_open(at("2026-01-10T00:00:05Z")) == at("2026-01-10T00:00:10Z")


def test_windows_apply_together():
    night = parse("cron=0 22 * * *; duration=4h")
    january = parse("start=2026-01-12T00:00:00Z; end=2026-02-01T00:00:00Z")
    both = Windows((night, january))
    assert not both.is_open(at("2026-01-10T23:00:00Z")), "night, but before January's window"
    assert both.next_open(at("2026-01-10T23:00:00Z")) == at("2026-01-12T00:00:00Z"), "inside the night of the 11th"
    assert both.closes_at(at("2026-01-12T00:00:00Z")) == at("2026-01-12T02:00:00Z")
    assert both.next_open(at("2026-02-02T00:00:00Z")) is None
    assert Windows().is_open(at("2026-01-01T00:00:00Z")) and Windows().closes_at(at("2026-01-01T00:00:00Z")) is None


@pytest.mark.parametrize("spec, expected", [
    ("start=yesterday", "is not an RFC 3339 time"),
    ("start=2026-01-10T22:00:00", "with its offset"),
    ("start=2026-01-10T22:00:00Z; end=2026-01-10T21:00:00Z", "is not after start"),
    ("cron=0 22 * * *", "needs duration="),
    ("cron=61 22 * * *; duration=1h", "is not a 5-field cron expression"),
    ("cron=0 22 * *; duration=1h", "is not a 5-field cron expression"),
    ("cron=0 22 * * *; duration=soon", "write it as e.g. 4h"),
    ("cron=0 22 * * *; duration=1h; tz=Mars/Olympus", "is not an IANA time zone"),
    ("from=2026-01-10T22:00:00Z", "'from=2026-01-10T22:00:00Z' is not one of start=..., end=..."),
    ("start=2026-01-10T22:00:00Z; start=2026-01-10T23:00:00Z", "start given twice"),
    ("", "give start= and/or end="),
])
def test_bad_windows_say_what_is_wrong(spec, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace("*", r"\*").replace(".", r"\.")):
        parse(spec)


def test_durations_and_parse_all():
    assert parse_duration("1h30m") == 5400 and parse_duration("2d") == 172800 and parse_duration("90s") == 90
    windows = parse_all(["", "cron=0 22 * * *; duration=4h", "cron=0 22 * * *; duration=4h"])
    assert len(windows.windows) == 1 and str(windows) == "cron=0 22 * * *; duration=4h"
    assert timedelta(seconds=parse("cron=0 1 * * *; duration=1.5h").duration) == timedelta(minutes=90)
