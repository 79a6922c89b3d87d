"""The agent's Prometheus endpoint, scraped over HTTP after real pins against the real CRI-O
and registry."""

from __future__ import annotations

import time

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from pinsvc import errors
from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import Kind, final_status, free_port, set_status


async def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{address}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def labelled(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(ls)[label]: v for (n, ls), v in samples.items() if n == name}


async def test_metrics_after_a_real_pin_and_a_failed_apply(agent_factory, workload):
    address = f"127.0.0.1:{free_port()}"
    agent = agent_factory(**{"server-metrics": address})
    before = await scrape(address)
    assert total(before, "pinsvc_pinned_images") == 0
    assert total(before, "pinsvc_apply_total") == 0
    assert total(before, "pinsvc_pulls_in_flight") == 0

    images = [workload["app-a"], workload["app-b"], workload["oci"], workload["multiarch"]]
    started = time.time()
    events, error = await apply(agent, SetSpec("web", 1, tuple(images)))
    assert error is None, error
    pulled = [e.image for e in events if e.WhichOneof("event") == "image" and e.image.kind == Kind.PULLED]
    assert sorted(p.image for p in pulled) == sorted(images)
    pulled_bytes = sum(p.bytes for p in pulled)
    assert pulled_bytes > 0

    m = await scrape(address)
    assert total(m, "pinsvc_pull_duration_seconds_count", result="pulled") == len(images)
    assert total(m, "pinsvc_pull_duration_seconds_count", result="failed") == 0
    assert set(labelled(m, "pinsvc_pull_duration_seconds_count", "size_class")) == {"lt_10MiB"}
    assert total(m, "pinsvc_pull_duration_seconds_sum") > 0
    assert total(m, "pinsvc_pull_queue_wait_seconds_count") == len(images)
    assert total(m, "pinsvc_pulled_bytes_total") == pulled_bytes
    assert total(m, "pinsvc_pulls_in_flight") == 0
    assert total(m, "pinsvc_pinned_images") == len(images)
    assert total(m, "pinsvc_pinned_bytes") == pulled_bytes
    assert total(m, "pinsvc_reload_duration_seconds_count") >= 1
    assert total(m, "pinsvc_dropin_writes_total") == 1
    assert total(m, "pinsvc_apply_total", result="success") == 1
    assert total(m, "pinsvc_apply_total", result="failed") == 0
    assert total(m, "pinsvc_set_current_generation", set="web") == 1
    succeeded = total(m, "pinsvc_set_last_success_timestamp_seconds", set="web")
    assert started <= succeeded <= time.time()
    assert total(m, "pinsvc_pull_retries_total") == 0
    assert total(m, "pinsvc_pull_failures_total") == 0
    assert total(m, "pinsvc_space_check_failures_total") == 0
    assert total(m, "pinsvc_verification_failures_total") == 0
    assert total(m, "process_resident_memory_bytes") > 0

    # A digest the registry does not have: the set fails, its last good pins stay.
    unknown = workload["app-a"].split("@")[0] + "@sha256:" + "ab" * 32
    events, error = await apply(agent, SetSpec("web", 2, (workload["app-a"], unknown)))
    assert error is not None
    assert set_status(final_status(events), "web").last_failed_generation == 2
    m = await scrape(address)
    failures = labelled(m, "pinsvc_pull_failures_total", "reason")
    assert failures == {"not_found": 1}, failures
    assert set(failures) <= errors.ERROR_CLASSES
    assert total(m, "pinsvc_apply_total", result="failed") == 1
    assert total(m, "pinsvc_apply_total", result="success") == 1
    assert total(m, "pinsvc_set_current_generation", set="web") == 1
    assert total(m, "pinsvc_set_last_success_timestamp_seconds", set="web") == succeeded
    assert total(m, "pinsvc_pinned_images") == len(images), "the failed Apply keeps the last good pins"
    assert total(m, "pinsvc_pinned_bytes") == pulled_bytes
    assert total(m, "pinsvc_pull_duration_seconds_count", result="pulled") == len(images), "nothing pulled"
    assert not any("sha256" in str(labels) for _, labels in m), "no image in any label"


async def test_no_metrics_endpoint_without_the_flag(agent):
    listening = [c for c in psutil.Process(agent.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [], "without --server-metrics (and --server-tcp) the agent listens on no TCP port"
