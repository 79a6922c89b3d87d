"""Agent drift checks against the fake runtime (the real one is in tests/e2e/test_drift.py):
repairs, failures and the Degraded condition, and an Apply never waiting behind a repair."""

from __future__ import annotations

import asyncio

import pytest

from pinsvc import errors
from pinsvc.core.agent import Agent
from pinsvc.core.drift import DROPIN_CHANGED, DROPIN_REMOVED, IMAGE_REMOVED, IMAGE_UNPINNED
from pinsvc.core.state import DEGRADED, DRIFT_REPAIR_FAILED, StateStore
from pinsvc.model import PinnedImageSet
from tests.unit.fakes import FakeRuntime, agent_settings, fake_agent

A, B = "r.io/a@sha256:" + "a" * 64, "r.io/b@sha256:" + "b" * 64


@pytest.fixture
def make_agent(tmp_path):
    def make(interval: float = 0.0, metrics=None) -> tuple[Agent, FakeRuntime]:
        settings = agent_settings(tmp_path, drift_interval=interval)
        runtime = FakeRuntime(settings.dropin_path)
        return fake_agent(settings, runtime, metrics), runtime

    return make


async def pinned(agent: Agent, *images: str) -> None:
    """An Apply in its own task, as the server runs each RPC."""
    outcome = await asyncio.create_task(agent.apply([PinnedImageSet("web", 1, images)], emit=lambda e: None))
    assert outcome.error is None, outcome.error


async def test_no_drift_touches_nothing(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A, B)
    reloads, mtime = runtime.reloads, agent.dropin.path.stat().st_mtime_ns
    assert await agent.check_drift() == []
    assert (runtime.reloads, agent.dropin.path.stat().st_mtime_ns) == (reloads, mtime)
    assert agent.state.repairs == []


async def test_removed_image_is_pulled_again_without_a_reload(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A, B)
    runtime.present.discard(A)
    reloads = runtime.reloads
    [repair] = await agent.check_drift()
    assert (repair.kind, repair.target, repair.repaired) == (IMAGE_REMOVED, A, True)
    assert runtime.pulls.count(A) == 2 and runtime.reloads == reloads
    status = agent.status_snapshot(await runtime.list_images())
    assert [(r.kind, r.target, r.repaired) for r in status.drift_repairs] == [(IMAGE_REMOVED, A, True)]
    assert next(i for i in status.images if i.image == A).phase == "pinned"
    assert StateStore(agent.store.directory).load().repairs == agent.state.repairs


async def test_unpinned_image_gets_a_reload(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A)
    runtime.loaded.clear()  # e.g. CRI-O restarted with another config dir, then back
    [repair] = await agent.check_drift()
    assert (repair.kind, repair.repaired) == (IMAGE_UNPINNED, True) and A in runtime.loaded


async def test_hand_edited_dropin_is_rewritten(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A, B)
    written = agent.dropin.path.read_bytes()
    agent.dropin.path.write_bytes(written.replace(f'    "{B}",\n'.encode(), b""))
    await runtime.reload()
    kinds = {(r.kind, r.repaired) for r in await agent.check_drift()}
    assert kinds == {(DROPIN_CHANGED, True), (IMAGE_UNPINNED, True)}
    assert agent.dropin.path.read_bytes() == written and runtime.loaded == {A, B}


async def test_failed_repair_degrades_then_clears(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A)
    agent.dropin.path.write_bytes(b"[crio.image]\npinned_images = []\n")  # foreign: not overwritten
    [repair] = await agent.check_drift()
    assert not repair.repaired and "not written by pinsvc" in repair.error
    degraded = agent.state.conditions[DEGRADED]
    assert (degraded.status, degraded.reason) == ("True", DRIFT_REPAIR_FAILED)
    [again] = await agent.check_drift()
    assert again.count == 2 and len(agent.state.repairs) == 1

    agent.dropin.path.unlink()
    [fixed] = await agent.check_drift()
    assert (fixed.kind, fixed.repaired) == (DROPIN_REMOVED, True)
    assert agent.state.conditions[DEGRADED].status == "False"


async def test_a_failed_apply_keeps_its_degraded_reason(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A)
    agent.state.set_condition(DEGRADED, "True", "PrefetchFailed", "a set failed")
    runtime.present.discard(A)
    runtime.pull_error = errors.ImageNotFound(f"{A} not found")
    [repair] = await agent.check_drift()
    assert not repair.repaired and "not found" in repair.error
    assert agent.state.images[A].phase == "failed" and "drift repair" in agent.state.images[A].last_error
    assert agent.state.conditions[DEGRADED].reason == "PrefetchFailed"


async def test_drift_gone_by_itself_clears_degraded(make_agent):
    agent, runtime = make_agent()
    await pinned(agent, A)
    runtime.present.discard(A)
    runtime.pull_error = errors.ImageNotFound("gone")
    await agent.check_drift()
    assert agent.state.conditions[DEGRADED].reason == DRIFT_REPAIR_FAILED
    runtime.present.add(A)  # someone pulled it again
    assert await agent.check_drift() == []
    assert agent.state.conditions[DEGRADED].status == "False"


async def test_an_apply_cancels_a_repair_in_flight(make_agent):
    agent, runtime = make_agent(interval=0.01)
    await pinned(agent, A)
    runtime.present.discard(A)
    runtime.gate = asyncio.Event()
    agent.start_drift_checks()
    try:
        for _ in range(500):
            if runtime.pulls.count(A) == 2:
                break
            await asyncio.sleep(0.01)
        assert runtime.pulls.count(A) == 2, "the repair is pulling"
        repair_task = agent._current
        apply = asyncio.create_task(pinned(agent, A, B))
        await asyncio.sleep(0.05)
        assert repair_task.cancelled(), "the Apply does not wait behind the repair"
        runtime.gate.set()
        await asyncio.wait_for(apply, 5)
        assert agent.state.repairs == [] and agent.state.pinned == sorted([A, B])
    finally:
        await agent.close()
    assert agent._drift_task.done()


async def test_checks_skip_while_an_apply_holds_the_lock(make_agent):
    agent, runtime = make_agent(interval=0.01)
    await pinned(agent, A)
    runtime.present.discard(A)
    async with agent._lock:
        agent.start_drift_checks()
        await asyncio.sleep(0.1)
        assert runtime.pulls.count(A) == 1, "no repair while the lock is held"
    for _ in range(200):
        if agent.state.repairs:
            break
        await asyncio.sleep(0.01)
    await agent.close()
    assert [r.kind for r in agent.state.repairs] == [IMAGE_REMOVED]


def test_no_checks_when_off(make_agent):
    agent, _ = make_agent(interval=0)
    agent.start_drift_checks()
    assert agent._drift_task is None


async def test_repairs_are_counted_in_metrics(make_agent):
    from pinsvc.metrics import Metrics
    metrics = Metrics(process_collectors=False)
    agent, runtime = make_agent(metrics=metrics)
    await pinned(agent, A)
    runtime.present.discard(A)
    agent.dropin.path.unlink()
    await agent.check_drift()

    def value(name, **labels):
        return metrics.registry.get_sample_value(name, labels)

    assert value("pinsvc_drift_repairs_total", kind=IMAGE_REMOVED, result="repaired") == 1
    assert value("pinsvc_drift_repairs_total", kind=DROPIN_REMOVED, result="repaired") == 1
    assert value("pinsvc_dropin_writes_total") == 2  # the Apply's, the repair's
    assert value("pinsvc_pinned_images") == 1
