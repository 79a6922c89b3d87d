"""The rollout engine's decisions (canary, parallelism, abort, paused pools, resume) with
scripted agents: pure scheduling logic. The real thing runs in tests/e2e/test_rollout.py."""

import asyncio

import grpc
import pytest
from pinsvc_client import NotFound, Unavailable, pb

from pinsvc.coordinator.objects import PinnedImageSet
from pinsvc.coordinator.record import FAILED, NOT_STARTED, PAUSED, SKIPPED, UNAVAILABLE, UPDATED
from pinsvc.coordinator.rollout import Options, PoolPlan, Rollout, Target
from pinsvc.retry import Backoff

SET = PinnedImageSet("s", 3, "", {}, ("r.io/a@sha256:" + "a" * 64,), "test")


class ScriptedAgents:
    """Agents that answer (and fail, as PinClient does) from a script: node -> 'ok' | 'fail' | 'down' | 'current'."""

    def __init__(self, script, delay=0.01):
        self.script, self.delay = script, delay
        self.running = 0
        self.peak = 0
        self.applied: list[str] = []

    def __call__(self, endpoint, node):
        return _Client(self, node)


class _Client:
    def __init__(self, agents, node):
        self.agents, self.node = agents, node

    def _answer(self):
        if self.agents.script.get(self.node) == "down":
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")

    async def close(self):
        return None

    def _status(self, current):
        return pb.NodeStatus(node=self.node, pinned_image_sets=[pb.PinnedImageSetStatus(
            name="s", desired_generation=3, current_generation=3 if current else 0)],
            images=[pb.ImageDetail(image=i, sets=["s"], pinned=current) for i in SET.images])

    async def status(self):
        self._answer()
        return self._status(self.agents.script.get(self.node) == "current")

    async def check_space(self, images):
        self._answer()
        if self.agents.script.get(self.node) == "unsizable":
            raise NotFound(grpc.StatusCode.NOT_FOUND, "manifest unknown")
        return pb.SpacePlan(fits=True, verdict="fits")

    async def apply(self, specs, parallelism=0):
        a = self.agents
        a.running += 1
        a.peak = max(a.peak, a.running)
        a.applied.append(self.node)
        try:
            await asyncio.sleep(a.delay)
            if a.script.get(self.node) == "fail":
                yield pb.ApplyEvent(status=self._status(False))
                raise NotFound(grpc.StatusCode.NOT_FOUND, "image missing")
            yield pb.ApplyEvent(status=self._status(True))
        finally:
            a.running -= 1


def pool(name, nodes, width=1, paused=False, skip=()):
    return PoolPlan(name, tuple(Target(n, name, f"unix:///{n}", (SET,), "NotReady" if n in skip else None)
                                for n in nodes), width, paused)


async def run(plans, script, retries=3, **options):
    agents = ScriptedAgents(script)
    rollout = Rollout(plans, Options(backoff=Backoff(initial_seconds=0.01, attempts=retries), **options),
                      connect=agents)
    await rollout.run()
    return rollout, agents


def states(rollout):
    return {n: r.state for n, r in rollout.record.nodes.items()}


async def test_at_most_max_unavailable_nodes_apply_at_once():
    rollout, agents = await run([pool("w", [f"n{i}" for i in range(6)], width=2)], {})
    assert set(states(rollout).values()) == {UPDATED} and agents.peak == 2


async def test_max_parallel_overrides_the_pool():
    _, agents = await run([pool("w", [f"n{i}" for i in range(6)], width=1)], {}, max_parallel=3)
    assert agents.peak == 3


async def test_a_failure_aborts_the_pool_but_not_the_nodes_in_flight_or_other_pools():
    plans = [pool("w", ["a", "b", "c", "d"], width=2), pool("infra", ["x"])]
    rollout, agents = await run(plans, {"a": "fail"}, abort_after=1)
    s = states(rollout)
    assert s["a"] == FAILED and s["b"] == UPDATED, "b was in flight with a and finished"
    assert s["c"] == s["d"] == NOT_STARTED and s["x"] == UPDATED
    assert "aborted" in rollout.aborted["w"]


async def test_abort_after_zero_never_aborts():
    rollout, _ = await run([pool("w", ["a", "b", "c"])], {"a": "fail", "b": "fail"}, abort_after=0)
    assert states(rollout) == {"a": FAILED, "b": FAILED, "c": UPDATED}


async def test_canary_goes_first_and_can_pause_the_rest():
    rollout, agents = await run([pool("w", ["a", "b", "c"], width=3)], {}, canary=1, canary_pause=True)
    assert agents.applied == ["a"] and states(rollout) == {"a": UPDATED, "b": NOT_STARTED, "c": NOT_STARTED}
    rollout, agents = await run([pool("w", ["a", "b", "c"], width=3)], {}, canary=1)
    assert agents.applied[0] == "a" and set(states(rollout).values()) == {UPDATED}


async def test_paused_pools_and_skipped_nodes_are_untouched():
    plans = [pool("w", ["a", "b"], skip=("b",)), pool("p", ["c"], paused=True)]
    rollout, agents = await run(plans, {})
    assert states(rollout) == {"a": UPDATED, "b": SKIPPED, "c": PAUSED} and agents.applied == ["a"]


async def test_unavailable_agents_are_retried_then_reported():
    rollout, agents = await run([pool("w", ["a", "b"])], {"a": "down"}, retries=3, abort_after=0)
    record = rollout.record.nodes["a"]
    assert record.state == UNAVAILABLE and record.attempts == 3
    assert "no agent at /a: is `pinsvc agent` running" in record.reason, "what to do, not only what failed"
    assert states(rollout)["b"] == UPDATED


async def test_nodes_already_current_are_not_applied_again():
    rollout, agents = await run([pool("w", ["a", "b"])], {"a": "current"})
    assert agents.applied == ["b"]
    assert rollout.record.nodes["a"].reason == "already at the desired content"


@pytest.mark.parametrize("deadline", [0.05])
async def test_a_node_past_its_deadline_fails(deadline):
    agents = ScriptedAgents({}, delay=1.0)
    rollout = Rollout([pool("w", ["a"])], Options(node_deadline_seconds=deadline), connect=agents)
    await rollout.run()
    assert rollout.record.nodes["a"].state == FAILED and "deadline" in rollout.record.nodes["a"].reason


async def test_a_node_whose_images_cannot_all_be_sized_is_still_applied():
    rollout, agents = await run([pool("w", ["a"])], {"a": "unsizable"})
    assert agents.applied == ["a"] and states(rollout)["a"] == UPDATED
