"""The warm stage's gates with a scripted Warmer: pinctl's (coordinator/warmup.py) and the
controller's (controller/warming.py). What they let start, and the reasons they write. The
real thing: tests/e2e/test_warm.py, tests/e2e/controller/test_warm.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from pinsvc.controller.warming import CONDITION, PoolWarms, content_key
from pinsvc.coordinator.objects import PinnedImageSet
from pinsvc.coordinator.record import FAILED, NOT_STARTED, NodeRecord, Record
from pinsvc.coordinator.rollout import PoolPlan, Target
from pinsvc.coordinator.warmup import SKIPPED, WarmGate, condition
from pinsvc.retry import Backoff
from pinsvc.warm.plan import WARMED, Progress
from pinsvc.warm.registry import CACHE_UNAVAILABLE, CacheError
from pinsvc.warm.window import Windows, parse

IMAGE = "upstream.example.invalid/site/release@sha256:" + "a" * 64
SET = PinnedImageSet("s", 1, "", {}, (IMAGE,), "test")
PLAN = PoolPlan("worker", (Target("n1", "worker", "unix:///n1", (SET,)),), 1, False)
NEVER = Windows((parse("end=2000-01-01T00:00:00Z"),))


class ScriptedWarmer:
    """`fails`: the CacheError to raise; `fallback`: where registries.conf lets nodes go."""

    def __init__(self, fails: CacheError | None = None, fallback: str = ""):
        self.fails, self._fallback = fails, fallback
        self.warms: list[list[str]] = []

    async def warm(self, images, *, windows=Windows, done=None, on_progress=lambda p: None, on_done=lambda k: None):
        self.warms.append(list(images))
        if self.fails:
            raise self.fails
        progress = Progress(WARMED, 1, 1, 10, 10, caches=["127.0.0.1:5000"])
        on_progress(progress)
        return progress

    def fallback(self, images) -> str:
        return self._fallback

    async def aclose(self) -> None:
        pass


def down() -> CacheError:
    return CacheError("127.0.0.1:5000", CACHE_UNAVAILABLE, "manifest x: cannot connect: Connection refused",
                      retryable=True)


def gate(warmer, windows=Windows()) -> tuple[WarmGate, Record, list[str]]:
    said: list[str] = []
    record = Record(None)
    return WarmGate({"worker": windows}, record, warmer=warmer, say=said.append), record, said


def test_pinctl_warms_the_pools_images_and_says_so_on_the_pool():
    warmer = ScriptedWarmer()
    g, record, _ = gate(warmer)
    assert asyncio.run(g.before_pool(PLAN, [NodeRecord("n1", "worker", "unix:///n1")]))
    assert warmer.warms == [[IMAGE]]
    warmed = condition(record.warm["worker"])
    assert warmed["type"] == "PinnedImageSetsWarmed" and warmed["status"] == "True"
    assert warmed["message"].startswith("Warmed: 0.0 of 0.0 MiB (1 of 1 blobs) in 127.0.0.1:5000")


def test_pinctl_starts_no_node_when_the_cache_is_down_and_the_source_is_blocked():
    g, record, said = gate(ScriptedWarmer(fails=down()))
    node = NodeRecord("n1", "worker", "unix:///n1")
    assert not asyncio.run(g.before_pool(PLAN, [node]))
    assert (node.state, node.cause) == (FAILED, CACHE_UNAVAILABLE)
    assert node.reason.startswith("not started: the site cache was not warmed: cache 127.0.0.1:5000: ")
    assert said == ["pool worker: warm stage: cache 127.0.0.1:5000: manifest x: cannot connect: Connection refused"]


def test_pinctl_goes_on_without_the_cache_when_registries_conf_lets_the_nodes_pull_elsewhere():
    g, record, said = gate(ScriptedWarmer(fails=down(), fallback="upstream.example.invalid/site/release"))
    node = NodeRecord("n1", "worker", "unix:///n1")
    assert asyncio.run(g.before_pool(PLAN, [node]))
    assert node.state == "Pending" and record.warm["worker"]["state"] == SKIPPED
    assert said[0].endswith("; the nodes pull from upstream.example.invalid/site/release instead "
                            "(registries.conf allows it)")


def test_pinctl_starts_no_node_of_a_pool_whose_window_never_opens_again():
    g, _, _ = gate(None, NEVER)
    node = NodeRecord("n1", "worker", "unix:///n1")
    assert not asyncio.run(g.before_pool(PLAN, [node]))
    assert (node.state, node.cause) == (NOT_STARTED, "WindowClosed")
    assert not asyncio.run(g.before_node(PLAN, node))


def warms(warmer) -> PoolWarms:
    return PoolWarms(warmer, poke=lambda: None, backoff=Backoff(initial_seconds=5, attempts=1, jitter=0))


def test_the_controller_holds_a_pools_nodes_until_it_is_warmed():
    async def scenario():
        pools = warms(ScriptedWarmer())
        assert not pools.ready("worker", [IMAGE], Windows(), None), "the warm just started"
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert pools.ready("worker", [IMAGE], Windows(), None)
        return pools.condition("worker", None, "2026-01-01T00:00:00Z")

    warmed = asyncio.run(scenario())
    assert warmed["status"] == "True" and warmed["message"].endswith(f"[content {content_key([IMAGE])}]")


def test_a_new_leader_does_not_warm_again_what_the_pools_condition_says_is_warmed():
    old = {"type": CONDITION, "status": "True", "message": f"Warmed: ... [content {content_key([IMAGE])}]"}
    warmer = ScriptedWarmer()
    assert warms(warmer).ready("worker", [IMAGE], Windows(), old) and warmer.warms == []
    other = {**old, "message": "Warmed: ... [content 000000000000]"}

    async def scenario():
        return warms(warmer).ready("worker", [IMAGE], Windows(), other)

    assert not asyncio.run(scenario()), "other content: warmed again"


def test_the_controller_names_the_down_cache_and_blocks_the_pool_unless_the_nodes_can_pull_elsewhere():
    async def scenario(fallback):
        pools = warms(ScriptedWarmer(fails=down(), fallback=fallback))
        pools.ready("worker", [IMAGE], Windows(), None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return pools, pools.ready("worker", [IMAGE], Windows(), None)

    pools, ready = asyncio.run(scenario(""))
    assert not ready and pools.blocked() == {"worker": f"warm stage: {down()}"}
    failed = pools.condition("worker", None, "2026-01-01T00:00:00Z")
    assert (failed["status"], failed["reason"]) == ("False", CACHE_UNAVAILABLE)
    assert failed["message"].startswith("cache 127.0.0.1:5000: manifest x: cannot connect") and "tried again in" in failed["message"]
    pools, ready = asyncio.run(scenario("upstream.example.invalid/site/release"))
    assert ready and pools.blocked() == {}


def test_the_controller_writes_when_a_closed_window_opens():
    now = datetime(2026, 1, 10, 21, 0, tzinfo=timezone.utc)
    pools = PoolWarms(None, poke=lambda: None, backoff=Backoff(), clock=lambda: 100.0, now=lambda: now)
    nightly = Windows((parse("cron=0 22 * * *; duration=4h"),))
    assert not pools.ready("worker", [IMAGE], nightly, None)
    assert pools.wake_at() == 100.0 + 3600
