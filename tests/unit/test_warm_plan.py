"""The warm stage's arithmetic (pinsvc/warm/plan.py): order, pacer, window fit, ETA, rates."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from pinsvc.warm.plan import PAUSED, WARMING, Blob, Pacer, Progress, finish_time, fits, order, parse_rate
from pinsvc.warm.window import Windows, parse

MiB = 1 << 20


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_order_puts_big_blobs_first_and_a_digests_repositories_together():
    blobs = {Blob("cache/a", "sha256:1", 10), Blob("cache/b", "sha256:2", 50), Blob("cache/a", "sha256:2", 50),
             Blob("cache/c", "sha256:3", 20)}
    assert [(b.repository, b.digest) for b in order(blobs)] == [
        ("cache/a", "sha256:2"), ("cache/b", "sha256:2"), ("cache/c", "sha256:3"), ("cache/a", "sha256:1")]
    assert Blob("cache/a", "sha256:1", 10).key == "cache/a@sha256:1"


def test_the_pacer_spaces_starts_by_size_over_rate_and_takes_back_unused_slots():
    pacer = Pacer(rate=1 * MiB)
    assert pacer.reserve(2 * MiB, now=100.0) == 100.0
    assert pacer.reserve(1 * MiB, now=100.5) == 102.0, "after the 2 s slot of the first"
    assert pacer.reserve(1 * MiB, now=100.6) == 103.0
    pacer.refund(1 * MiB, now=100.7)  # the cache had the last one: its slot is free again
    assert pacer.reserve(4 * MiB, now=100.8) == 103.0
    assert pacer.reserve(1, now=200.0) == 200.0, "no credit builds up while idle: no burst"
    assert Pacer(0).reserve(10 * MiB, now=5.0) == 5.0 and Pacer(0).seconds(10) == 0


def test_a_transfer_starts_only_when_it_ends_before_the_window_closes():
    window = Windows((parse("cron=0 22 * * *; duration=1h"),))
    assert fits(at("2026-01-10T22:00:00Z"), 1800, window)
    assert fits(at("2026-01-10T22:30:00Z"), 1800, window)
    assert not fits(at("2026-01-10T22:30:01Z"), 1800, window)
    # one bigger than a whole opening starts at the opening's beginning, or it never would
    assert fits(at("2026-01-10T22:00:00Z"), 7200, window)
    assert not fits(at("2026-01-10T22:05:00Z"), 7200, window)
    assert fits(at("2026-01-10T03:00:00Z"), 10**9, Windows())


def test_the_eta_counts_the_closed_hours_between_openings():
    window = Windows((parse("cron=0 22 * * *; duration=1h"),))
    now = at("2026-01-10T22:30:00Z")
    # 1 h of work at 1 MiB/s: 30 min tonight, 30 min tomorrow night
    assert finish_time(now, 3600 * MiB, 1 * MiB, window) == at("2026-01-11T22:30:00Z")
    assert finish_time(now, 60 * MiB, 1 * MiB, window) == now + timedelta(minutes=1)
    assert finish_time(at("2026-01-10T12:00:00Z"), 60 * MiB, 1 * MiB, window) == at("2026-01-10T22:01:00Z")
    assert finish_time(now, 0, 0, window) == now
    assert finish_time(now, 1, 0, window) is None, "no rate known yet"

    once = Windows((parse("end=2026-01-10T23:00:00Z"),))
    assert finish_time(now, 3600 * MiB, 1 * MiB, once) is None, "the window does not open again"


def test_an_eta_looks_a_bounded_number_of_openings_ahead_the_event_loop_waits_meanwhile():
    window = Windows((parse("cron=* * * * * */6; duration=3s"),))
    started = time.process_time()
    assert finish_time(at("2026-01-10T22:00:00Z"), 9 * MiB, 1000, window) is None, "3 hours of openings ahead"
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("text, rate", [("20MiB", 20 * MiB), ("20MiB/s", 20 * MiB), ("8M", 8e6), ("8MB", 8e6),
                                        ("500k", 5e5), ("1.5GiB", 1.5 * 2**30), ("1000", 1000), ("0", 0)])
def test_rates(text, rate):
    assert parse_rate(text) == rate


def test_a_bad_rate_says_how_to_write_it():
    with pytest.raises(ValueError, match="rate '20 furlongs': write it as bytes per second, e.g. 20MiB"):
        parse_rate("20 furlongs")


def test_progress_in_one_line():
    p = Progress(WARMING, 60, 12, 200 * MiB, 40 * MiB, rate=7.9 * MiB, eta=at("2026-01-10T22:14:05Z"),
                 caches=["127.0.0.1:5000"])
    assert p.summary() == ("Warming: 40.0 of 200.0 MiB (12 of 60 blobs) in 127.0.0.1:5000, 7.9 MiB/s, "
                           "ETA 2026-01-10T22:14:05Z")
    p.state, p.next_open = PAUSED, at("2026-01-11T22:00:00+01:00")
    assert p.summary().endswith("; window closed, opens 2026-01-11T21:00:00Z")


def test_the_link_model_queues_fetches_at_the_budget_then_at_the_measured_rate():
    from pinsvc.warm.plan import LinkModel
    link = LinkModel(rate=1 * MiB)
    assert link.start(2 * MiB, now=10.0) == 12.0
    assert link.start(1 * MiB, now=10.5) == 13.0, "behind the first on the same link"
    link.stored(2 * MiB, now=12.5)
    link.stored(1 * MiB, now=14.0)  # 3 MiB in 4 s of fetching: 0.75 MiB/s
    assert link.rate == 0.75 * MiB
    assert link.start(3 * MiB, now=20.0) == 24.0, "an idle link does not count"
    unknown = LinkModel(rate=0)
    assert unknown.start(MiB, now=1.0) == 1.0
    unknown.stored(MiB, now=3.0)
    assert unknown.rate == 0.5 * MiB
