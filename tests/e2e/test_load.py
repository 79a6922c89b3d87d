"""Load (issue 5): while an Apply of 100 images runs, 50 concurrent clients call GetStatus
and CheckSpace for 60 s. Every call must succeed and the Apply must still pin everything.
Latencies are measured and reported (printed, and written to `load.json` in the test's tmp
dir), never asserted: performance is measured in `bench/`, not asserted in tests.
"""

from __future__ import annotations

import asyncio
import json
import statistics

import grpc
import pytest

from pinsvc_client import SetSpec
from devenv import images as fixture_images
from tests.e2e.conftest import apply
from tests.e2e.helpers import condition, final_status, set_status

CLIENTS = 50
SECONDS = 60.0
IMAGES = 100
CHECKED = 5
"""Images per CheckSpace call (a client's own slice of the Apply's images)."""


@pytest.fixture(scope="module")
def bench_refs(registry) -> list[str]:
    """The 100-image bench workload (5 shared 2 MiB bases, a unique 1.5 MiB layer each)."""
    return asyncio.run(fixture_images.push_many(registry.host, fixture_images.bench_workload(IMAGES)))


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `samples`."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"calls": 0}
    return {"calls": len(samples), "p50_ms": round(percentile(samples, 50) * 1000, 1),
            "p99_ms": round(percentile(samples, 99) * 1000, 1), "max_ms": round(max(samples) * 1000, 1),
            "mean_ms": round(statistics.fmean(samples) * 1000, 1)}


async def client_loop(agent, images: list[str], until: float, latencies: dict[str, list[float]],
                      errors: list[str], during_apply: dict[str, list[float]], apply_task: asyncio.Task) -> None:
    """One client: GetStatus, CheckSpace, GetStatus, ... on its own channel until `until`."""
    loop = asyncio.get_running_loop()
    async with agent.client() as client:
        calls = (("GetStatus", client.status), ("CheckSpace", lambda: client.check_space(images)))
        n = 0
        while loop.time() < until:
            name, call = calls[n % 2]
            n += 1
            t0 = loop.time()
            try:
                await call()
            except grpc.aio.AioRpcError as e:
                errors.append(f"{name}: {e.code().name}: {e.details()}")
                continue
            latencies[name].append(loop.time() - t0)
            if not apply_task.done():
                during_apply[name].append(latencies[name][-1])


@pytest.mark.timeout(300)
async def test_fifty_clients_polling_during_an_apply_of_100_images_see_no_errors(
        agent_factory, node, bench_refs, tmp_path):
    agent = agent_factory()
    spec = SetSpec("bench", 1, tuple(bench_refs))
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Two pulls at a time: under the load the Apply then lasts about the 60 s (~61 s measured).
    apply_task = asyncio.create_task(apply(agent, spec, parallelism=2))
    apply_done: list[float] = []
    apply_task.add_done_callback(lambda _: apply_done.append(loop.time()))
    latencies: dict[str, list[float]] = {"GetStatus": [], "CheckSpace": []}
    errors: list[str] = []
    during_apply: dict[str, list[float]] = {"GetStatus": [], "CheckSpace": []}
    until = started + SECONDS
    clients = [client_loop(agent, [bench_refs[(i * CHECKED + k) % IMAGES] for k in range(CHECKED)], until,
                           latencies, errors, during_apply, apply_task) for i in range(CLIENTS)]
    await asyncio.gather(*clients)
    load_seconds = loop.time() - started
    events, error = await asyncio.wait_for(apply_task, 180)
    apply_seconds = apply_done[0] - started

    assert not errors, f"{len(errors)} failed calls, e.g. {errors[:5]}"
    assert error is None, error
    status = final_status(events)
    assert set_status(status, "bench").current_generation == 1
    assert condition(status, "PinnedImageSetsDegraded").status == "False"
    assert set(bench_refs) <= node.pinned_images(), "every image pinned despite the load"
    assert all(latencies.values()), "both RPCs were called"
    assert all(during_apply.values()), "both RPCs were called while the Apply ran"

    results = {
        "clients": CLIENTS, "seconds": round(load_seconds, 2), "images": IMAGES,
        "apply_seconds": round(apply_seconds, 2),
        "all": {name: summary(samples) for name, samples in latencies.items()},
        "during_apply": {name: summary(samples) for name, samples in during_apply.items()},
    }
    (tmp_path / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"load: {json.dumps(results)}")
