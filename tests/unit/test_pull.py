"""Unit tests of the pull stage with the fake runtime (pure logic; the real CRI is in e2e)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import pytest

from pinsvc import errors
from pinsvc.config import PullSettings
from pinsvc.core.pull import Puller
from pinsvc.model import ImageEvent, ImageEventKind as K
from pinsvc.retry import Backoff
from tests.unit.fakes import BLOCK, FakeRuntime

pytestmark = pytest.mark.timeout(5)


def pending_tasks(before: set[asyncio.Task] = frozenset()) -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() - set(before) if t is not asyncio.current_task() and not t.done()}


@pytest.fixture(autouse=True)
async def _no_asyncio_pending_tasks():
    """Fails a test that leaves tasks behind (after kopf's fixture of the same name)."""
    before = asyncio.all_tasks()
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    leaked = pending_tasks(before)
    for task in leaked:
        task.cancel()
    assert not leaked, f"leaked tasks: {leaked}"


class FakeSleep:
    """Records backoff delays without waiting for them; `hook` runs inside each sleep."""

    def __init__(self, hook=None):
        self.delays: list[float] = []
        self.hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
        if self.hook:
            await self.hook()


def settings(max_attempts=5, backoff_max_seconds=10.0, backoff_jitter=0.0, **kw) -> PullSettings:
    base = dict(parallelism=5, max_parallelism=10, attempt_timeout_seconds=0)
    backoff = Backoff(initial_seconds=1.0, factor=2.0, max_seconds=backoff_max_seconds, jitter=backoff_jitter,
                      attempts=max_attempts)
    return PullSettings(**{**base, **kw}, backoff=backoff)


def make(rt: FakeRuntime, sleep=None, rng=None, **kw) -> Puller:
    return Puller(settings(**kw), pull=rt.pull, is_present=rt.is_present, sleep=sleep or FakeSleep(), rng=rng)


class Events(list):
    def __call__(self, event: ImageEvent) -> None:
        self.append(event)

    def of(self, image: str) -> list[ImageEvent]:
        return [e for e in self if e.image == image]

    def kinds(self, image: str) -> list[K]:
        return [e.kind for e in self.of(image)]


# ---- presence, ordering ---------------------------------------------------------------------

async def test_present_images_are_not_pulled():
    rt = FakeRuntime(present={"b"})
    ev = Events()
    res = await make(rt).pull_all(["a", "b", "c"], on_event=ev, known_present={"a"})
    assert rt.checks == Counter({"b": 1, "c": 1})  # known_present skips the check
    assert rt.calls == Counter({"c": 1})
    assert ev.kinds("a") == [K.ALREADY_PRESENT] and ev.kinds("b") == [K.ALREADY_PRESENT]
    assert ev.kinds("c") == [K.QUEUED, K.PULLING, K.PULLED]
    assert [r.already_present for r in res.values()] == [True, True, False]
    assert all(r.ok for r in res.values())


async def test_images_known_missing_are_pulled_without_a_second_check():
    rt = FakeRuntime(present={"b"})
    ev = Events()
    res = await make(rt).pull_all(["a", "b"], on_event=ev, known_missing={"a", "b"})
    assert rt.checks == Counter()  # the caller just asked the runtime
    assert rt.calls == Counter({"a": 1, "b": 1})
    assert all(r.ok and not r.already_present for r in res.values())


async def test_presence_checks_are_bounded_by_parallelism():
    rt = FakeRuntime(present={f"i{n}" for n in range(8)}, present_delay=0.01)
    await make(rt).pull_all([f"i{n}" for n in range(8)], on_event=Events(), parallelism=3)
    assert rt.max_checking == 3


async def test_failed_presence_check_pulls_anyway():
    rt = FakeRuntime()
    res = await make(rt).pull_all(["broken-check"], on_event=Events())
    assert res["broken-check"].ok and rt.calls["broken-check"] == 1


async def test_duplicates_collapse_and_results_keep_input_order():
    rt = FakeRuntime()
    res = await make(rt).pull_all(["b", "a", "b", "c", "a"], on_event=Events())
    assert list(res) == ["b", "a", "c"]
    assert rt.calls == Counter({"a": 1, "b": 1, "c": 1})


async def test_pulled_event_reports_attempt_duration_and_queue_wait():
    rt = FakeRuntime(delay=0.05)
    ev = Events()
    res = await make(rt).pull_all(["a", "b"], on_event=ev, parallelism=1)
    pulled = {e.image: e for e in ev if e.kind is K.PULLED}
    late = max(pulled.values(), key=lambda e: e.queue_wait_seconds)
    assert late.attempt == 1 and late.bytes == 0
    assert 0.04 <= late.duration_seconds < 0.5
    assert 0.04 <= late.queue_wait_seconds < 0.5  # it waited for the other pull
    assert res[late.image].queue_wait_seconds == late.queue_wait_seconds
    assert res[late.image].duration_seconds == late.duration_seconds
    pulling = [e for e in ev.of(late.image) if e.kind is K.PULLING]
    assert pulling[0].queue_wait_seconds == late.queue_wait_seconds


async def test_failing_event_observer_does_not_break_pulls():
    def observer(event):
        raise ValueError("observer bug")
    rt = FakeRuntime()
    res = await make(rt).pull_all(["a"], on_event=observer)
    assert res["a"].ok


# ---- parallelism ----------------------------------------------------------------------------

async def test_concurrency_reaches_but_never_exceeds_the_call_bound():
    rt = FakeRuntime(delay=0.01)
    res = await make(rt, parallelism=2).pull_all([f"i{n}" for n in range(7)], on_event=Events())
    assert rt.max_active == 2 and all(r.ok for r in res.values())


async def test_node_wide_bound_holds_across_concurrent_calls():
    rt = FakeRuntime(delay=0.01)
    puller = make(rt, max_parallelism=4)
    a, b = await asyncio.gather(
        puller.pull_all([f"a{n}" for n in range(6)], on_event=Events(), parallelism=3),
        puller.pull_all([f"b{n}" for n in range(6)], on_event=Events(), parallelism=3))
    assert rt.max_active == 4
    assert all(r.ok for r in [*a.values(), *b.values()])


@pytest.mark.parametrize("bound", ["call", "node"])
async def test_slots_are_released_while_backing_off(bound):
    rt = FakeRuntime(a=[errors.RegistryError("503 from registry"), 0.0])
    b_pulled = rt.started_event("b")
    puller = make(rt, sleep=FakeSleep(hook=b_pulled.wait), max_parallelism=1 if bound == "node" else 10)
    if bound == "call":
        run = puller.pull_all(["a", "b"], on_event=Events(), parallelism=1)
    else:
        async def run_two():
            first = asyncio.create_task(puller.pull_all(["a"], on_event=Events()))
            await rt.started_event("a").wait()
            second = await puller.pull_all(["b"], on_event=Events())
            return {**await first, **second}
        run = run_two()
    res = await asyncio.wait_for(run, 2)  # a held slot during a's backoff would block b: deadlock
    assert res["a"].ok and res["a"].attempts == 2 and res["b"].ok


# ---- single-flight --------------------------------------------------------------------------

async def test_concurrent_calls_share_one_pull_per_image():
    rt = FakeRuntime(delay=0.01)
    puller = make(rt)
    ev1, ev2 = Events(), Events()
    r1, r2 = await asyncio.gather(puller.pull_all(["a", "b", "c"], on_event=ev1),
                                  puller.pull_all(["c", "b", "a"], on_event=ev2))
    assert rt.calls == Counter({"a": 1, "b": 1, "c": 1})
    assert all(r.ok and r.attempts == 1 for r in [*r1.values(), *r2.values()])
    for ev in (ev1, ev2):
        assert all(ev.kinds(i)[0] is K.QUEUED and ev.kinds(i)[-1] is K.PULLED for i in "abc")


async def test_joining_caller_waits_for_the_pull_and_takes_no_slot():
    gate = asyncio.Event()
    rt = FakeRuntime(a=[gate])
    puller = make(rt)
    first = asyncio.create_task(puller.pull_all(["a"], on_event=Events()))
    await rt.started_event("a").wait()
    ev2 = Events()
    second = asyncio.create_task(puller.pull_all(["a", "b"], on_event=ev2, parallelism=1))
    await asyncio.wait_for(rt.started_event("b").wait(), 1)  # b got the only slot while a is pulled
    gate.set()
    r1, r2 = await first, await second
    assert rt.calls["a"] == 1 and rt.checks["a"] == 1  # the joiner did not even check presence
    assert r1["a"].ok and r2["a"].ok and r2["b"].ok
    assert ev2.kinds("a") == [K.QUEUED, K.PULLED]


async def test_shared_pull_goes_on_when_one_caller_is_cancelled():
    gate = asyncio.Event()
    rt = FakeRuntime(a=[gate])
    puller = make(rt)
    first = asyncio.create_task(puller.pull_all(["a"], on_event=Events()))
    await rt.started_event("a").wait()
    second = asyncio.create_task(puller.pull_all(["a"], on_event=Events()))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert rt.cancelled == []
    gate.set()
    assert (await second)["a"].ok and rt.calls["a"] == 1


async def test_shared_pull_is_cancelled_when_every_caller_is():
    rt = FakeRuntime(a=[BLOCK], cancel_delay=0.02)
    puller = make(rt)
    before = asyncio.all_tasks()
    calls = [asyncio.create_task(puller.pull_all(["a"], on_event=Events())) for _ in range(2)]
    await rt.started_event("a").wait()
    await asyncio.sleep(0.01)
    calls[0].cancel()
    await asyncio.sleep(0.01)
    assert rt.cancelled == []
    calls[1].cancel()
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
    assert rt.cancelled == ["a"] and rt.stopped == ["a"]
    assert pending_tasks(before) == set()


async def test_new_pull_waits_for_an_abandoned_pull_of_the_same_image_to_stop():
    rt = FakeRuntime(cancel_delay=0.05, a=[BLOCK, 0.0])
    puller = make(rt)
    first = asyncio.create_task(puller.pull_all(["a"], on_event=Events()))
    await rt.started_event("a").wait()
    first.cancel()
    await asyncio.sleep(0)  # the first pull is now stopping, slowly
    second = await puller.pull_all(["a"], on_event=Events())
    with pytest.raises(asyncio.CancelledError):
        await first
    assert second["a"].ok and rt.calls["a"] == 2 and rt.max_per_image == 1


# ---- retries, backoff, timeouts -------------------------------------------------------------

async def test_retryable_errors_are_retried_with_exponential_backoff(caplog):
    rt = FakeRuntime(a=[errors.RegistryError("registry answered 503"), errors.RuntimeUnavailable("crio down"), 0.0])
    sleep = FakeSleep()
    ev = Events()
    with caplog.at_level(logging.WARNING, logger="pinsvc.pull"):
        res = await make(rt, sleep=sleep).pull_all(["a"], on_event=ev)
    assert res["a"].ok and res["a"].attempts == 3 and rt.calls["a"] == 3
    assert sleep.delays == [1.0, 2.0]
    assert ev.kinds("a") == [K.QUEUED, K.PULLING, K.RETRYING, K.PULLING, K.RETRYING, K.PULLING, K.PULLED]
    retrying = [e for e in ev if e.kind is K.RETRYING]
    assert [(e.attempt, e.retry_in_seconds) for e in retrying] == [(1, 1.0), (2, 2.0)]
    assert "503" in retrying[0].reason and "crio down" in retrying[1].reason
    assert [e.attempt for e in ev if e.kind is K.PULLING] == [1, 2, 3]
    assert "pull a: attempt 1/5 failed: registry answered 503; retrying in 1.00s" in caplog.messages


async def test_backoff_is_capped_and_attempts_are_bounded():
    rt = FakeRuntime(a=[errors.RegistryError(f"503 #{n}") for n in range(10)])
    sleep = FakeSleep()
    ev = Events()
    res = await make(rt, sleep=sleep, max_attempts=6, backoff_max_seconds=5.0).pull_all(["a"], on_event=ev)
    assert sleep.delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert rt.calls["a"] == 6 and res["a"].attempts == 6
    assert isinstance(res["a"].error, errors.RegistryError) and "503 #5" in str(res["a"].error)
    failed = ev.of("a")[-1]
    assert failed.kind is K.FAILED and failed.attempt == 6 and "503 #5" in failed.reason


async def test_backoff_jitter_comes_from_rng_within_the_fraction():
    rt = FakeRuntime(a=[errors.RegistryError("503")] * 4)
    sleep = FakeSleep()
    await make(rt, sleep=sleep, rng=random.Random(7), backoff_jitter=0.2).pull_all(["a"], on_event=Events())
    ref = random.Random(7)
    bases = [1.0, 2.0, 4.0, 8.0]
    assert sleep.delays == [b * (1 + ref.uniform(-0.2, 0.2)) for b in bases]
    assert all(0.8 * b <= d <= 1.2 * b for b, d in zip(bases, sleep.delays))
    assert sleep.delays != bases


@pytest.mark.parametrize("error", [errors.ImageNotFound("manifest unknown"),
                                   errors.RegistryError("bad request", retryable=False)])
async def test_non_retryable_errors_fail_at_once_and_others_go_on(error):
    rt = FakeRuntime(a=[error])
    sleep = FakeSleep()
    ev = Events()
    res = await make(rt, sleep=sleep).pull_all(["a", "b"], on_event=ev)
    assert rt.calls["a"] == 1 and sleep.delays == []
    assert res["a"].error is error and res["a"].attempts == 1
    assert ev.kinds("a") == [K.QUEUED, K.PULLING, K.FAILED] and ev.of("a")[-1].reason == str(error)
    assert res["b"].ok


async def test_foreign_exceptions_are_wrapped_and_not_retried():
    cause = ValueError("weird")
    rt = FakeRuntime(a=[cause])
    res = await make(rt).pull_all(["a"], on_event=Events())
    err = res["a"].error
    assert isinstance(err, errors.RuntimeError_) and err.__cause__ is cause
    assert not err.retryable and rt.calls["a"] == 1 and "a" in str(err)


async def test_attempt_timeout_becomes_a_retryable_timeout_error():
    rt = FakeRuntime(a=[1.0, 1.0])
    ev = Events()
    res = await make(rt, max_attempts=2).pull_all(["a"], on_event=ev, attempt_timeout=0.02)
    err = res["a"].error
    assert isinstance(err, errors.Timeout) and err.retryable
    assert "pull a" in str(err) and "0.02s" in str(err)
    assert rt.calls["a"] == 2 and rt.cancelled == ["a", "a"]
    assert ev.kinds("a") == [K.QUEUED, K.PULLING, K.RETRYING, K.PULLING, K.FAILED]


async def test_attempt_timeout_defaults_to_settings_and_zero_disables_it():
    rt = FakeRuntime(delay=0.05)
    puller = make(rt, max_attempts=1, attempt_timeout_seconds=0.01)
    res = await puller.pull_all(["a"], on_event=Events())
    assert isinstance(res["a"].error, errors.Timeout)
    res = await puller.pull_all(["b"], on_event=Events(), attempt_timeout=0)
    assert res["b"].ok


async def test_attempt_timeout_excludes_queue_wait():
    rt = FakeRuntime(delay=0.15)
    res = await make(rt, max_attempts=1).pull_all(["a", "b", "c"], on_event=Events(), parallelism=1,
                                                  attempt_timeout=0.2)
    assert all(r.ok and r.attempts == 1 for r in res.values())
    assert max(r.queue_wait_seconds for r in res.values()) > 0.2  # waited longer than the bound


# ---- disk full, cancellation ----------------------------------------------------------------

async def test_no_space_left_cancels_the_rest_of_the_call():
    full = errors.NoSpaceLeft("no space left on device")
    rt = FakeRuntime(ok=[0.0], a=[(0.02, full)], b=[BLOCK], c=[BLOCK], d=[BLOCK], cancel_delay=0.02)
    ev = Events()
    before = asyncio.all_tasks()
    res = await make(rt).pull_all(["ok", "a", "b", "c", "d"], on_event=ev, parallelism=3)
    assert res["ok"].ok
    assert res["a"].error is full and rt.calls["a"] == 1 and ev.kinds("a")[-1] is K.FAILED
    assert sorted(rt.cancelled) == ["b", "c"] and "d" not in rt.calls  # in flight / still queued
    assert sorted(rt.stopped) == ["b", "c"] and pending_tasks(before) == set()  # returned once all stopped
    for image in "bcd":
        assert isinstance(res[image].error, errors.NoSpaceLeft) and "while pulling a" in str(res[image].error)
        assert res[image].error.__cause__ is full
        last = ev.of(image)[-1]
        assert last.kind is K.CANCELLED and "a" in last.reason
    assert res["b"].attempts == 1 and res["d"].attempts == 0


async def test_no_space_left_leaves_other_calls_alone():
    gate = asyncio.Event()
    rt = FakeRuntime(x=[gate], full=[(0.02, errors.NoSpaceLeft("no space left on device"))])
    puller = make(rt)
    other = asyncio.create_task(puller.pull_all(["x"], on_event=Events()))
    await rt.started_event("x").wait()
    res = await puller.pull_all(["x", "full"], on_event=Events())
    assert isinstance(res["x"].error, errors.NoSpaceLeft) and rt.cancelled == []
    gate.set()
    assert (await other)["x"].ok and rt.calls["x"] == 1


async def test_cancelling_pull_all_stops_its_pulls_and_leaks_nothing():
    rt = FakeRuntime(a=[BLOCK], b=[BLOCK], cancel_delay=0.02)
    ev = Events()
    before = asyncio.all_tasks()
    task = asyncio.create_task(make(rt).pull_all(["a", "b", "c"], on_event=ev, parallelism=2))
    await rt.started_event("a").wait()
    await rt.started_event("b").wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(rt.cancelled) == ["a", "b"] and sorted(rt.stopped) == ["a", "b"] and "c" not in rt.calls
    assert all(ev.kinds(i)[-1] is K.CANCELLED for i in "abc")
    assert pending_tasks(before) == set()
