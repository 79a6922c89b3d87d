"""The one retry policy: the Backoff schedule, the retry() loop (retryable errors only,
bounded attempts, Retry-After, the log lines) and the settings that embed a Backoff per
topic (agent keys and flags, pinctl flags)."""

from __future__ import annotations

import argparse
import logging
import random

import grpc
import pytest
from pinsvc_client import NotFound, Unavailable

from pinsvc import config, errors
from pinsvc.coordinator import cli as pinctl
from pinsvc.coordinator.rollout import Options
from pinsvc.retry import Backoff, retry

pytestmark = pytest.mark.timeout(10)
log = logging.getLogger("pinsvc.test.retry")


# ---- the schedule --------------------------------------------------------------------------

def test_delays_grow_by_the_factor_up_to_the_cap():
    b = Backoff(initial_seconds=0.5, factor=3.0, max_seconds=10.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_an_attempt_count_too_large_for_floats_waits_the_cap():
    assert Backoff(initial_seconds=1, factor=10.0, max_seconds=7.0, jitter=0.0).delay(10_000) == 7.0


def test_jitter_spreads_each_wait_within_its_fraction_from_the_rng():
    b = Backoff(initial_seconds=1.0, factor=2.0, max_seconds=100.0, jitter=0.25)
    delays = [b.delay(n, random.Random(n)) for n in range(1, 200)]
    bases = [min(2.0 ** (n - 1), 100.0) for n in range(1, 200)]
    assert all(0.75 * base <= d <= 1.25 * base for base, d in zip(bases, delays))
    assert len({round(d / base, 6) for base, d in zip(bases, delays)}) > 100, "really random"
    assert delays[0] == 1.0 * (1 + random.Random(1).uniform(-0.25, 0.25)), "the rng given is used"


def test_problems_name_every_field_out_of_range():
    assert Backoff().problems() == {}
    bad = Backoff(initial_seconds=-1, factor=0.5, max_seconds=-2, jitter=1.5, attempts=0)
    assert set(bad.problems()) == {"initial_seconds", "factor", "max_seconds", "jitter", "attempts"}


# ---- the loop -------------------------------------------------------------------------------

class Attempts:
    """An attempt that raises the scripted errors in turn, then returns "done"."""

    def __init__(self, *failures: Exception):
        self.failures = list(failures)
        self.calls: list[int] = []

    async def __call__(self, n: int) -> str:
        self.calls.append(n)
        if self.failures:
            raise self.failures.pop(0)
        return "done"


class Sleeps(list):
    async def __call__(self, delay: float) -> None:
        self.append(delay)


FAST = Backoff(initial_seconds=1.0, factor=2.0, max_seconds=3.0, jitter=0.0, attempts=4)


async def run(attempt, backoff=FAST, **kw):
    sleeps = Sleeps()
    result = await retry(attempt, backoff, what="thing x", logger=log, sleep=sleeps, **kw)
    return result, sleeps


async def test_retryable_errors_are_retried_with_the_schedule_and_logged(caplog):
    attempt = Attempts(errors.RegistryError("HTTP 503"), errors.Timeout("slow"))
    with caplog.at_level(logging.WARNING, logger=log.name):
        result, sleeps = await run(attempt)
    assert result == "done" and attempt.calls == [1, 2, 3] and sleeps == [1.0, 2.0]
    assert caplog.messages == ["thing x: attempt 1/4 failed: HTTP 503; retrying in 1.00s",
                               "thing x: attempt 2/4 failed: slow; retrying in 2.00s"]


async def test_attempts_are_bounded_and_the_last_error_is_raised(caplog):
    attempt = Attempts(*(errors.RegistryError(f"503 #{n}") for n in range(1, 10)))
    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(errors.RegistryError, match="503 #4"):
        await run(attempt)
    assert attempt.calls == [1, 2, 3, 4]
    assert caplog.messages[-1] == "thing x: attempt 4/4 failed: 503 #4; giving up"
    assert len(caplog.messages) == 4


async def test_an_error_that_is_not_retryable_stops_at_once(caplog):
    attempt = Attempts(errors.ImageNotFound("manifest unknown"))
    with caplog.at_level(logging.WARNING, logger=log.name), pytest.raises(errors.ImageNotFound):
        await run(attempt)
    assert attempt.calls == [1]
    assert caplog.messages == ["thing x: attempt 1/4 failed: manifest unknown; not retryable"]


async def test_whether_to_retry_is_the_errors_own_say():
    retried = errors.RuntimeError_("odd", retryable=True)
    attempt = Attempts(retried, errors.RuntimeError_("odd, final"))
    with pytest.raises(errors.RuntimeError_, match="final"):
        await run(attempt)
    assert attempt.calls == [1, 2]
    attempt = Attempts(ValueError("a bug"))
    with pytest.raises(ValueError):
        await run(attempt)
    assert attempt.calls == [1], "foreign errors are not retried"


async def test_the_clients_pin_errors_say_it_too():
    attempt = Attempts(Unavailable(grpc.StatusCode.UNAVAILABLE, "down"), NotFound(grpc.StatusCode.NOT_FOUND, "gone"))
    with pytest.raises(NotFound):
        await run(attempt)
    assert attempt.calls == [1, 2]


async def test_a_caller_can_narrow_what_it_retries():
    attempt = Attempts(errors.RuntimeUnavailable("down"))
    with pytest.raises(errors.RuntimeUnavailable):
        await run(attempt, retryable=lambda e: "race" in str(e))
    assert attempt.calls == [1]


async def test_a_peers_retry_after_is_waited_for_up_to_the_cap():
    asked = errors.RegistryError("HTTP 429")
    asked.retry_after_seconds = 2.5
    result, sleeps = await run(Attempts(asked))
    assert result == "done" and sleeps == [2.5], "longer than the 1 s of the schedule"
    too_long = errors.RegistryError("HTTP 429")
    too_long.retry_after_seconds = 3.5
    attempt = Attempts(too_long)
    with pytest.raises(errors.RegistryError):
        await run(attempt)
    assert attempt.calls == [1], "beyond the 3 s cap: reported, not waited for"


async def test_the_hook_sees_each_retry_before_its_wait():
    seen = []
    attempt = Attempts(errors.Timeout("t1"), errors.Timeout("t2"))
    await run(attempt, on_retry=lambda n, error, delay: seen.append((n, str(error), delay)))
    assert seen == [(1, "t1", 1.0), (2, "t2", 2.0)]


async def test_one_attempt_means_no_retry():
    attempt = Attempts(errors.Timeout("t"))
    with pytest.raises(errors.Timeout):
        await run(attempt, Backoff(attempts=1))
    assert attempt.calls == [1]


# ---- the settings that embed a Backoff -----------------------------------------------------

def parse(argv, env=None, file=None):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv), env=env or {}, file=file)


def test_each_topic_has_its_own_schedule_with_the_documented_defaults():
    s = parse([])
    assert s.pull.backoff == Backoff(initial_seconds=1.0, factor=2.0, max_seconds=10.0, jitter=0.2, attempts=5)
    assert s.registry.backoff == Backoff(initial_seconds=0.5, factor=2.0, max_seconds=10.0, jitter=0.0, attempts=3)
    assert s.cri_fs_info_backoff == Backoff(initial_seconds=0.05, factor=2.0, max_seconds=0.2, jitter=0.0,
                                            attempts=5)
    assert Options().backoff == Backoff(initial_seconds=1.0, factor=2.0, max_seconds=30.0, jitter=0.2, attempts=3)


def test_the_flat_keys_set_one_part_and_keep_the_topics_other_defaults(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("cri_fs_info_max_attempts = 2\n[registry]\nbackoff_max_seconds = 4.0\n")
    s = parse(["--pull-backoff-initial-seconds", "0.3", "--registry-max-attempts", "6"],
              env={"PINSVC_PULL_BACKOFF_JITTER": "0"}, file=f)
    assert s.pull.backoff == Backoff(initial_seconds=0.3, factor=2.0, max_seconds=10.0, jitter=0.0, attempts=5)
    assert s.registry.backoff == Backoff(initial_seconds=0.5, factor=2.0, max_seconds=4.0, jitter=0.0, attempts=6)
    assert s.cri_fs_info_backoff.attempts == 2 and s.cri_fs_info_backoff.initial_seconds == 0.05


def test_every_retry_key_is_a_flag_with_help():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    text = parser.format_help()
    for prefix in ("--pull-", "--registry-", "--cri-fs-info-"):
        for key in ("max-attempts", "backoff-initial-seconds", "backoff-factor", "backoff-max-seconds",
                    "backoff-jitter"):
            assert prefix + key in text
    assert "manifest and token requests: cap of the wait between attempts" in " ".join(text.split())


@pytest.mark.parametrize("argv, words", [
    (["--pull-max-attempts", "0"], "pull.max_attempts 0 must be >= 1"),
    (["--registry-backoff-jitter", "2"], "registry.backoff_jitter 2.0 must be between 0 and 1"),
    (["--cri-fs-info-backoff-factor", "0.5"], "cri_fs_info_backoff_factor 0.5 must be >= 1"),
])
def test_a_bad_schedule_is_named_by_its_key(argv, words):
    with pytest.raises(errors.InvalidArgument, match=words):
        parse(argv)


def test_pinctl_flags_fill_the_rollout_schedule(capsys):
    args = pinctl.parser().parse_args(["rollout", "-f", "x.yaml", "--retries", "5",
                                       "--retry-backoff-max-seconds", "4"])
    assert pinctl._options(args).backoff == Backoff(initial_seconds=1.0, factor=2.0, max_seconds=4.0, jitter=0.2,
                                                    attempts=5)
    args = pinctl.parser().parse_args(["rollout", "-f", "x.yaml", "--retries", "0"])
    assert pinctl._options(args).backoff.attempts == 1, "--retries 0 still tries once"
    args = pinctl.parser().parse_args(["rollout", "-f", "x.yaml", "--retry-backoff-jitter", "-1"])
    with pytest.raises(errors.InvalidArgument, match="--retry-backoff-jitter -1.0 must be between 0 and 1"):
        pinctl._options(args)
    with pytest.raises(SystemExit):
        pinctl.parser().parse_args(["rollout", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--retries", "--retry-backoff-initial-seconds", "--retry-backoff-factor",
                 "--retry-backoff-max-seconds", "--retry-backoff-jitter"):
        assert flag in text
    assert "cap of the wait between attempts (default: 30.0)" in text
