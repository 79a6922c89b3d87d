"""The runtime health watcher and the condition it puts in the status (the real runtime, gRPC
health and the probes are in tests/e2e/test_health.py)."""

from __future__ import annotations

import asyncio
import itertools

from pinsvc.core.health import RuntimeHealth, RuntimeWatch
from pinsvc.core.state import DEGRADED, PREFETCH_FAILED, RUNTIME_UNREACHABLE, State
from pinsvc.model import PinnedImageSet
from tests.unit.fakes import FakeRuntime, agent_settings, fake_agent

A = "r.io/a@sha256:" + "a" * 64


def watch(runtime: FakeRuntime, interval: float = 0.0) -> tuple[RuntimeWatch, list[RuntimeHealth]]:
    times = (f"2030-01-01T00:00:{n:02d}Z" for n in itertools.count(1))
    w = RuntimeWatch(runtime.version, endpoint=runtime.endpoint, interval=interval, clock=lambda: next(times))
    heard: list[RuntimeHealth] = []
    w.subscribe(heard.append)
    return w, heard


async def test_the_watcher_announces_each_change_once():
    runtime = FakeRuntime()
    w, heard = watch(runtime)
    assert w.health is None
    assert await w.check() == RuntimeHealth(True, f"fake 1.0 at {runtime.endpoint}", "")
    runtime.down = True
    down = await w.check()
    assert not down.reachable and down.since == "2030-01-01T00:00:01Z"
    assert f"container runtime at {runtime.endpoint} is not reachable" in down.detail
    assert await w.check() == down  # no change: not announced again
    runtime.down = False
    back = await w.check()
    assert back.reachable and back.since == "2030-01-01T00:00:02Z"
    assert heard == [RuntimeHealth(True, f"fake 1.0 at {runtime.endpoint}", ""), down, back]


async def test_a_runtime_missing_from_the_start_is_seen_at_the_first_check():
    runtime = FakeRuntime()
    runtime.down = True
    w, heard = watch(runtime)
    first = await w.check()
    assert not first.reachable and first.since == "2030-01-01T00:00:01Z" and heard == [first]


async def test_a_probe_that_raises_anything_counts_as_unreachable_and_the_watch_goes_on():
    async def broken() -> str:
        raise ValueError("boom")

    w = RuntimeWatch(broken, endpoint="unix:///x.sock", interval=0.01)
    w.start()
    await asyncio.sleep(0.05)
    assert w.health is not None and not w.health.reachable and "boom" in w.health.detail
    assert w._task is not None and not w._task.done()
    await w.close()


async def test_the_watch_follows_the_runtime_every_interval_until_closed():
    runtime = FakeRuntime()
    w, heard = watch(runtime, interval=0.01)
    await w.check()
    w.start()
    runtime.down = True
    for _ in range(100):
        if not w.health.reachable:
            break
        await asyncio.sleep(0.01)
    runtime.down = False
    for _ in range(100):
        if w.health.reachable:
            break
        await asyncio.sleep(0.01)
    await w.close()
    assert [h.reachable for h in heard] == [True, False, True]
    runtime.down = True
    await asyncio.sleep(0.05)
    assert w.health.reachable  # closed: no more checks


def test_an_unreachable_runtime_degrades_the_status_naming_it():
    state = State()
    down = RuntimeHealth(False, "container runtime at unix:///c.sock is not reachable (Version): refused",
                         "2030-01-01T00:00:05Z")
    (c,) = state.status("n", "/d", runtime=down).conditions
    assert (c.type, c.status, c.reason, c.last_transition_time) == (DEGRADED, "True", RUNTIME_UNREACHABLE,
                                                                    "2030-01-01T00:00:05Z")
    assert c.message.startswith("container runtime at unix:///c.sock is not reachable (Version): refused")
    assert "neither pulled, pinned nor verified" in c.message
    assert not state.conditions  # shown, never stored
    assert state.status("n", "/d", runtime=RuntimeHealth(True, "crio", "2030-01-01T00:00:09Z")).conditions == ()


def test_a_node_degraded_already_keeps_its_reason_and_transition_time_behind_the_runtime():
    state = State()
    state.set_condition(DEGRADED, "True", PREFETCH_FAILED, "pinned image sets failed: web: no such image")
    stored = state.conditions[DEGRADED]
    degraded = state.status("n", "/d", runtime=RuntimeHealth(False, "container runtime gone", "2099-01-01T00:00:00Z"))
    c = degraded.condition(DEGRADED)
    assert (c.reason, c.last_transition_time) == (RUNTIME_UNREACHABLE, stored.last_transition_time)
    assert f"already degraded: {PREFETCH_FAILED}: pinned image sets failed: web: no such image" in c.message
    back = state.status("n", "/d", runtime=RuntimeHealth(True, "crio", "2099-01-01T00:01:00Z")).condition(DEGRADED)
    assert (back.reason, back.message, back.last_transition_time) == (stored.reason, stored.message,
                                                                       stored.last_transition_time)


def test_once_the_runtime_is_back_a_healthy_node_shows_when_it_stopped_being_degraded():
    state = State()
    state.set_condition(DEGRADED, "False", "AsExpected", "All is good")
    back = state.status("n", "/d", runtime=RuntimeHealth(True, "crio", "2099-01-01T00:01:00Z")).condition(DEGRADED)
    assert (back.status, back.reason, back.last_transition_time) == ("False", "AsExpected", "2099-01-01T00:01:00Z")
    older = state.status("n", "/d", runtime=RuntimeHealth(True, "crio", "2000-01-01T00:00:00Z")).condition(DEGRADED)
    assert older.last_transition_time == state.conditions[DEGRADED].last_transition_time


async def test_the_agent_status_follows_its_watcher(tmp_path):
    settings = agent_settings(tmp_path)
    runtime = FakeRuntime(settings.dropin_path)
    agent = fake_agent(settings, runtime)
    outcome = await asyncio.create_task(agent.apply([PinnedImageSet("web", 1, (A,))], emit=lambda e: None))
    assert outcome.status.condition(DEGRADED).status == "False"
    runtime.down = True
    await agent.runtime_health.check()
    c = (await agent.status()).condition(DEGRADED)
    assert (c.status, c.reason) == ("True", RUNTIME_UNREACHABLE) and runtime.endpoint in c.message
    runtime.down = False
    await agent.runtime_health.check()
    assert (await agent.status()).condition(DEGRADED).status == "False"
    await agent.close()
