"""The agent SIGKILLed at random moments of an Apply (issue 5): the drop-in is always the old
or the complete new file, never partial, never a temp file inside the drop-in directory,
and the restarted agent's next Apply converges.

One agent is killed and restarted over and over (seeded RNG, so a failing trial can be
replayed) against a CRI-O of this module. The kill moments: right after the DROPIN_WRITTEN
event, right after RUNTIME_RELOADED, the instant a temp file of the drop-in write appears
(during the write and its `crio config` validation), during a pull, and random delays
spread over a whole Apply.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

import grpc
import pytest

from pinsvc_client import SetSpec
from devenv.agent import AgentProcess
from devenv.crio import Crio, CrioError
from pinsvc.dropin_format import is_managed, render_dropin
from tests.e2e.conftest import apply, clean_node
from tests.e2e.helpers import Kind, Stage

SEED = int(os.environ.get("PINSVC_KILL_SEED", "20260505"))
TRIALS = 30
DROPIN = "50-pinned-images"
# "delay": anywhere in an Apply; "near-write": a random delay around the drop-in write,
# reload and verification (timed on an uninterrupted Apply).
MOMENTS = ("dropin-written", "reloaded", "temp-file", "pulling", "delay", "near-write")
APPLY_BOUND = 30.0


@pytest.fixture(scope="module")
def kill_crio(peers_root, registry):
    node = Crio(peers_root / "kill-crio", registries=[registry.host])
    node.start()
    yield node
    node.stop()


def leftovers(directory: Path) -> list[Path]:
    """Temp files or anything else but our drop-in, anywhere under the drop-in directory."""
    return [p for p in directory.rglob("*") if p.name != DROPIN or p.parent != directory]


def temp_leftovers(temp_dir: Path) -> list[Path]:
    return list(temp_dir.glob(f".pinsvc-{DROPIN}-*"))


def dropin_list(content: bytes) -> list[str]:
    assert is_managed(content), content[:80]
    return tomllib.loads(content.decode())["crio"]["image"]["pinned_images"]


class TempFileKiller(threading.Thread):
    """SIGKILLs `pid` the instant a temp file of the drop-in write appears in `temp_dir`."""

    def __init__(self, pid: int, temp_dir: Path, timeout: float = 10.0):
        super().__init__(daemon=True)
        self.pid, self.temp_dir, self.timeout = pid, temp_dir, timeout
        self.done = threading.Event()
        self.fired: str | None = None

    def run(self) -> None:
        prefix = f".pinsvc-{DROPIN}-"
        deadline = time.monotonic() + self.timeout
        while not self.done.is_set() and time.monotonic() < deadline:
            found = [n for n in os.listdir(self.temp_dir) if n.startswith(prefix)]
            if found:
                os.kill(self.pid, signal.SIGKILL)
                self.fired = found[0]
                return
            time.sleep(0.0005)


async def killed_apply(agent: AgentProcess, spec: SetSpec, moment: str, delay: float, temp_dir: Path):
    """Runs an Apply and SIGKILLs the agent at `moment`; returns (what happened, events)."""
    events: list = []
    killer = TempFileKiller(agent.proc.pid, temp_dir) if moment == "temp-file" else None

    async def consume() -> str:
        async with agent.client() as client:
            try:
                async for event in client.apply([spec]):
                    events.append(event)
                    kind = event.WhichOneof("event")
                    if moment == "dropin-written" and kind == "stage" and event.stage.stage == Stage.DROPIN_WRITTEN \
                            or moment == "reloaded" and kind == "stage" and event.stage.stage == Stage.RUNTIME_RELOADED \
                            or moment == "pulling" and kind == "image" and event.image.kind == Kind.PULLING:
                        agent.kill()
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return "killed mid-Apply"
        return "Apply finished first"

    if killer:
        killer.start()
    task = asyncio.create_task(consume())
    if moment in ("delay", "near-write"):
        await asyncio.sleep(delay)
        agent.kill()
    try:
        outcome = await asyncio.wait_for(task, APPLY_BOUND)
    finally:
        if killer:
            killer.done.set()
            killer.join(5)
    agent.kill()  # reaps it (or kills it when the Apply finished before the moment came)
    if killer and killer.fired is None:
        outcome = "Apply finished first"
    return outcome, events


@pytest.mark.timeout(300)
async def test_agent_sigkilled_at_random_moments_never_leaves_a_partial_dropin(
        kill_crio, registry, workload, tmp_path):
    node = kill_crio
    clean_node(node)
    rng = random.Random(SEED)
    dropin, temp_dir = node.dropin_dir / DROPIN, node.root  # temp files go next to the directory
    lists = [sorted({workload["oci"], workload["app-a"]}),
             sorted({workload["oci"], workload["app-b"], workload["three-layers"]}),
             sorted({workload["multiarch"], workload["app-a"], workload["three-layers"]}),
             sorted({workload["oci"], workload["multiarch"]})]
    everything = {i for l in lists for i in l}
    agent = AgentProcess(tmp_path / "agent", node, registry, **{"verify-timeout-seconds": "5"})
    agent.start()
    t_start = time.monotonic()
    # Every image present once, then a typical Apply (images present) timed for the delays.
    _, error = await apply(agent, SetSpec("web", 1, tuple(sorted(everything))))
    assert error is None, error
    t0 = time.monotonic()
    seen: dict[int, float] = {}
    async with agent.client() as client:
        async for event in client.apply([SetSpec("web", 2, tuple(lists[0]))]):
            if event.WhichOneof("event") == "stage":
                seen[event.stage.stage] = time.monotonic() - t0
    typical = time.monotonic() - t0
    assert Stage.PINS_VERIFIED in seen, seen
    # the write starts after IMAGES_READY; verification ends at PINS_VERIFIED
    write_window = (seen[Stage.IMAGES_READY], seen[Stage.PINS_VERIFIED] + 0.01)
    generation, current = 2, lists[0]
    moments = [MOMENTS[i % len(MOMENTS)] for i in range(TRIALS)]
    rng.shuffle(moments)
    log, file_states, outcomes = [], Counter(), Counter()

    for trial, moment in enumerate(moments):
        new = rng.choice([l for l in lists if l != current])
        generation += 1
        spec = SetSpec("web", generation, tuple(new))
        old_bytes = dropin.read_bytes() if dropin.exists() else None
        new_bytes = render_dropin(new).encode()
        removed = None
        if moment == "pulling" or rng.random() < 0.15:
            missing = [i for i in new if i not in current]
            if missing:
                removed = rng.choice(missing)
                try:
                    node.crictl("rmi", removed)
                except CrioError:
                    removed = None
        delay = {"delay": lambda: rng.uniform(0, 1.3 * typical),
                 "near-write": lambda: rng.uniform(*write_window)}.get(moment, lambda: 0.0)()

        outcome, events = await killed_apply(agent, spec, moment, delay, temp_dir)

        # What a kill may leave: the old file or the complete new one, nothing else.
        assert not leftovers(node.dropin_dir), f"trial {trial} ({moment}): {leftovers(node.dropin_dir)}"
        now = dropin.read_bytes() if dropin.exists() else None
        if now == old_bytes:
            state = "old"
        else:
            assert now == new_bytes, f"trial {trial} ({moment}): neither the old nor the new drop-in: {now!r}"
            assert dropin_list(now) == new
            state = "new"
        file_states[state] += 1
        outcomes[outcome] += 1

        # The restarted agent cleans up after the killed one and converges.
        agent.start()
        assert not temp_leftovers(temp_dir), f"trial {trial}: {temp_leftovers(temp_dir)} after restart"
        events2, error = await asyncio.wait_for(apply(agent, spec), APPLY_BOUND)
        assert error is None, f"trial {trial} ({moment}): {error}"
        assert dropin.read_bytes() == new_bytes
        pins = node.pinned_images()
        assert set(new) <= pins and not (everything - set(new)) & pins, f"trial {trial} ({moment}): pins {pins}"
        current = new
        stage_names = [Stage.Name(e.stage.stage) for e in events if e.WhichOneof("event") == "stage"]
        log.append(f"#{trial:02d} {moment:<14} delay {delay * 1000:5.0f} ms "
                   f"{'rmi ' + removed.split('/')[-1][:22] if removed else '':<27} {outcome:<21} "
                   f"file {state:<3} stages seen {stage_names}")

    took = time.monotonic() - t_start
    print(f"\n{TRIALS} kill trials (seed {SEED}) in {took:.1f}s, typical Apply {typical * 1000:.0f} ms "
          f"(write..verified {write_window[0] * 1000:.0f}..{write_window[1] * 1000:.0f} ms); "
          f"file after the kill: {dict(file_states)}; {dict(outcomes)}")
    print("\n".join(log))
    assert outcomes["killed mid-Apply"] >= 20, outcomes
    assert file_states["old"] and file_states["new"], "kills on both sides of the rename"
    agent.stop()
