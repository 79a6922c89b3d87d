"""Unit tests of the agent's metrics: events and outcomes in, values read back through the
metrics' own registry (and over HTTP from the /metrics endpoint on loopback)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

import aiohttp
import pytest

from pinsvc import config, errors
from pinsvc.config import PullSettings
from pinsvc.core.pull import Puller
from pinsvc.metrics import Metrics, MetricsServer, parse_address, size_class
from pinsvc.model import (ApplyOutcome, ImageDetail, ImageEvent, ImageEventKind as K, ImagePlan, NodeStatus,
                          SetStatus, SpacePlan, StageEvent, StageKind)
from pinsvc.retry import Backoff

pytestmark = pytest.mark.timeout(10)

MiB = 1 << 20
A, B = "r.example/a@sha256:" + "a" * 64, "r.example/b@sha256:" + "b" * 64


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def m(clock):
    return Metrics(process_collectors=False, clock=clock, wall_clock=lambda: 1_700_000_000.0)


def value(m: Metrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def plan(**sizes: int) -> StageEvent:
    images = tuple(ImagePlan(image, present=False, compressed_bytes=size) for image, size in sizes.items())
    space = SpacePlan(images, sum(sizes.values()), 0, 0, 0, "/", 2.0, 0, 85.0, 0.0, True, "fits")
    return StageEvent(StageKind.SPACE_CHECKED, "fits", 0.1, space)


def status(sets=(), images=()) -> NodeStatus:
    return NodeStatus("n1", tuple(sets), (), tuple(images), "/etc/crio/crio.conf.d/50-pinned-images")


def image(name: str, pinned=True, bytes=0) -> ImageDetail:
    return ImageDetail(name, "pinned" if pinned else "present", 1, bytes, "", pinned, True, ("web",))


def test_size_classes():
    assert [size_class(n) for n in (0, 1, 10 * MiB - 1, 10 * MiB, 100 * MiB, 1024 * MiB)] == [
        "unknown", "lt_10MiB", "lt_10MiB", "lt_100MiB", "lt_1GiB", "ge_1GiB"]


def test_a_pull_with_a_retry_then_a_failure(m, clock):
    emit = m.observer(lambda e: None)
    emit(plan(**{A: 5 * MiB, B: 200 * MiB}))
    emit(ImageEvent(A, K.QUEUED))
    emit(ImageEvent(A, K.PULLING, attempt=1, queue_wait_seconds=0.5))
    assert value(m, "pinsvc_pulls_in_flight") == 1
    clock.now += 2
    emit(ImageEvent(A, K.RETRYING, attempt=1, reason=f"pull {A}: attempt timed out after 2s",
                    error_class="timeout", retry_in_seconds=1))
    assert value(m, "pinsvc_pulls_in_flight") == 0, "nothing is in flight while backing off"
    emit(ImageEvent(A, K.PULLING, attempt=2, queue_wait_seconds=0.0))
    emit(ImageEvent(B, K.PULLING, attempt=1, queue_wait_seconds=0.0))
    assert value(m, "pinsvc_pulls_in_flight") == 2
    clock.now += 3
    emit(ImageEvent(A, K.PULLED, attempt=2, bytes=5 * MiB, duration_seconds=2.5))
    emit(ImageEvent(B, K.FAILED, attempt=1, reason=f"pull {B}: image not found in the registry (manifest unknown)",
                    error_class="not_found"))
    assert value(m, "pinsvc_pulls_in_flight") == 0
    assert value(m, "pinsvc_pull_duration_seconds_count", result="pulled", size_class="lt_10MiB") == 1
    assert value(m, "pinsvc_pull_duration_seconds_sum", result="pulled", size_class="lt_10MiB") == 2.5
    assert value(m, "pinsvc_pull_duration_seconds_count", result="failed", size_class="lt_10MiB") == 1
    assert value(m, "pinsvc_pull_duration_seconds_sum", result="failed", size_class="lt_10MiB") == 2
    assert value(m, "pinsvc_pull_duration_seconds_sum", result="failed", size_class="lt_1GiB") == 3
    assert value(m, "pinsvc_pull_queue_wait_seconds_count") == 3
    assert value(m, "pinsvc_pull_queue_wait_seconds_sum") == 0.5
    assert value(m, "pinsvc_pulled_bytes_total") == 5 * MiB
    assert value(m, "pinsvc_pull_retries_total", reason="timeout") == 1
    assert value(m, "pinsvc_pull_failures_total", reason="not_found") == 1


def test_cancellation_ends_the_attempt_and_counts_once(m):
    emit = m.observer(lambda e: None)
    emit(ImageEvent(A, K.PULLING, attempt=1))
    emit(ImageEvent(B, K.QUEUED))
    assert value(m, "pinsvc_pulls_in_flight") == 1
    emit(ImageEvent(A, K.CANCELLED, attempt=1, reason="request cancelled"))
    emit(ImageEvent(B, K.CANCELLED, attempt=0, reason="request cancelled"))
    assert value(m, "pinsvc_pulls_in_flight") == 0
    assert value(m, "pinsvc_pull_failures_total", reason="cancelled") == 2
    assert value(m, "pinsvc_pull_duration_seconds_count", result="failed", size_class="unknown") is None


def test_a_pull_shared_by_two_requests_is_counted_once(m):
    """A pull is one flight for every request wanting the image: each request hears every
    event of it, the metrics count it once."""
    first, second = m.observer(lambda e: None), m.observer(lambda e: None)
    for emit in (first, second):
        emit(ImageEvent(A, K.QUEUED))
    for emit in (first, second):  # broadcast
        emit(ImageEvent(A, K.PULLING, attempt=1, queue_wait_seconds=0.2))
    third = m.observer(lambda e: None)
    third(ImageEvent(A, K.QUEUED))  # joins while the attempt runs
    assert value(m, "pinsvc_pulls_in_flight") == 1
    first(ImageEvent(A, K.CANCELLED, attempt=1, reason="request cancelled"))  # leaves; the pull goes on
    assert value(m, "pinsvc_pulls_in_flight") == 1
    second(ImageEvent(A, K.PULLED, attempt=1, bytes=3 * MiB, duration_seconds=1.0))
    assert value(m, "pinsvc_pulls_in_flight") == 1
    third(ImageEvent(A, K.PULLED, attempt=1, duration_seconds=1.0))  # PullImages: no size known
    assert value(m, "pinsvc_pulls_in_flight") == 0
    assert value(m, "pinsvc_pull_duration_seconds_count", result="pulled", size_class="lt_10MiB") == 1
    assert value(m, "pinsvc_pulled_bytes_total") == 3 * MiB
    assert value(m, "pinsvc_pull_queue_wait_seconds_count") == 1
    assert value(m, "pinsvc_pull_failures_total", reason="cancelled") is None


def test_reasons_are_bounded(m):
    emit = m.observer(lambda e: None)
    emit(ImageEvent(A, K.FAILED, reason=f"{A}: manifest unknown", error_class="not_found"))  # before any attempt
    emit(ImageEvent(B, K.PULLING, attempt=1))
    emit(ImageEvent(B, K.FAILED, attempt=1, reason="pull b: something odd", error_class="pull b: something odd"))
    assert value(m, "pinsvc_pull_failures_total", reason="not_found") == 1
    assert value(m, "pinsvc_pull_failures_total", reason="other") == 1
    reasons = {s.labels["reason"] for f in m.registry.collect() for s in f.samples if "reason" in s.labels}
    assert reasons <= errors.ERROR_CLASSES


def test_stage_events_and_already_present(m):
    emit = m.observer(lambda e: None)
    emit(ImageEvent(A, K.ALREADY_PRESENT))
    emit(StageEvent(StageKind.DROPIN_WRITTEN, "written", 0.01))
    emit(StageEvent(StageKind.DROPIN_UNCHANGED, "unchanged"))
    emit(StageEvent(StageKind.RUNTIME_RELOADED, "SIGHUP", 0.3))
    emit(StageEvent(StageKind.DROPIN_RESTORED, "restored"))
    assert value(m, "pinsvc_images_already_present_total") == 1
    assert value(m, "pinsvc_dropin_writes_total") == 1
    assert value(m, "pinsvc_dropin_restores_total") == 1
    assert value(m, "pinsvc_reload_duration_seconds_count") == 1
    assert value(m, "pinsvc_reload_duration_seconds_sum") == 0.3
    assert value(m, "pinsvc_reload_duration_seconds_bucket", le="0.5") == 1


def test_outcomes(m):
    ok = status([SetStatus("web", 2, 2, 0, ""), SetStatus("db", 1, 1, 0, "")],
                [image(A, bytes=5 * MiB), image(B, bytes=7 * MiB), image("c", pinned=False, bytes=1)])
    m.observe_outcome(ApplyOutcome(ok, None))
    assert value(m, "pinsvc_apply_total", result="success") == 1
    assert value(m, "pinsvc_apply_total", result="failed") == 0
    assert value(m, "pinsvc_pinned_images") == 2
    assert value(m, "pinsvc_pinned_bytes") == 12 * MiB
    assert value(m, "pinsvc_set_current_generation", set="web") == 2
    assert value(m, "pinsvc_set_last_success_timestamp_seconds", set="web") == 1_700_000_000

    # web at generation 3 fails (space), db is dropped from the desired state.
    failed = status([SetStatus("web", 3, 2, 3, "insufficient space")], [image(A, bytes=5 * MiB)])
    m._wall_clock = lambda: 1_800_000_000.0
    error = errors.combined([errors.InsufficientSpace("insufficient space"), errors.ImageNotFound("x")])
    m.observe_outcome(ApplyOutcome(failed, error))
    assert value(m, "pinsvc_apply_total", result="failed") == 1
    assert value(m, "pinsvc_space_check_failures_total") == 1
    assert value(m, "pinsvc_verification_failures_total") == 0
    assert value(m, "pinsvc_set_current_generation", set="web") == 2
    assert value(m, "pinsvc_set_last_success_timestamp_seconds", set="web") == 1_700_000_000, "kept on failure"
    assert value(m, "pinsvc_set_current_generation", set="db") is None, "a removed set's series go away"
    assert value(m, "pinsvc_set_last_success_timestamp_seconds", set="db") is None
    assert value(m, "pinsvc_pinned_images") == 1

    m.observe_outcome(ApplyOutcome(failed, errors.VerificationFailed("not pinned")))
    assert value(m, "pinsvc_verification_failures_total") == 1
    m.observe_apply_cancelled()
    assert value(m, "pinsvc_apply_total", result="cancelled") == 1


def test_pinned_bytes_remember_what_was_pulled(m):
    """The status may hold 0 bytes for a pinned image (e.g. a set's last good pins after its
    new generation failed); the bytes seen when it was pulled count then."""
    emit = m.observer(lambda e: None)
    emit(ImageEvent(A, K.PULLING, attempt=1))
    emit(ImageEvent(A, K.PULLED, attempt=1, bytes=4 * MiB, duration_seconds=1))
    m.observe_status(status(images=[image(A, bytes=0), image(B, bytes=2 * MiB)]))
    assert value(m, "pinsvc_pinned_bytes") == 6 * MiB
    m.observe_status(status(images=[image(B, bytes=2 * MiB)]))  # A no longer wanted: forgotten
    m.observe_status(status(images=[image(A, bytes=0), image(B, bytes=2 * MiB)]))
    assert value(m, "pinsvc_pinned_bytes") == 2 * MiB


def test_observing_never_raises(m):
    m.observe(ImageEvent(A, "not a kind"))  # type: ignore[arg-type]
    m.observe_outcome(object())
    got = []
    m.observer(got.append)(ImageEvent(A, K.PULLING, attempt=1))
    assert got, "the event still reaches the request"


async def test_the_real_puller_reports_error_classes(m):
    """Retry and failure reasons come from the puller's errors, not from their messages."""
    runs = {A: [errors.RegistryError("pull a: connection reset by peer"), None],
            B: [errors.ImageNotFound("pull b: manifest unknown")]}

    async def pull(image: str) -> None:
        error = runs[image].pop(0)
        if error is not None:
            raise error

    async def sleep(_):
        await asyncio.sleep(0)

    async def is_present(_):
        return False

    puller = Puller(PullSettings(backoff=Backoff(initial_seconds=0, jitter=0)), pull=pull,
                    is_present=is_present, sleep=sleep)
    results = await puller.pull_all([A, B], on_event=m.observer(lambda e: None))
    assert results[A].ok and not results[B].ok
    assert value(m, "pinsvc_pull_retries_total", reason="registry") == 1
    assert value(m, "pinsvc_pull_failures_total", reason="not_found") == 1
    assert value(m, "pinsvc_pull_duration_seconds_count", result="pulled", size_class="unknown") == 1
    assert value(m, "pinsvc_pulls_in_flight") == 0


async def test_the_endpoint_serves_the_registry():
    m = Metrics()
    m.observe_apply_cancelled()
    server = MetricsServer(m, "127.0.0.1:0")
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=")
                text = await resp.text()
            async with session.get(f"http://127.0.0.1:{server.port}/metrics",
                                   headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp.text()).rstrip().endswith("# EOF")
            async with session.get(f"http://127.0.0.1:{server.port}/") as resp:
                assert resp.status == 404
    finally:
        await server.stop()
    assert 'pinsvc_apply_total{result="cancelled"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert "# TYPE pinsvc_pull_duration_seconds histogram" in text


def test_metrics_off_imports_no_prometheus_client():
    code = ("import sys, pinsvc.cli, pinsvc.api.server, pinsvc.core.agent;"
            "assert 'prometheus_client' not in sys.modules and 'pinsvc.metrics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_setting(tmp_path):
    def load(argv, env=None, file=None):
        parser = argparse.ArgumentParser()
        config.add_arguments(parser)
        return config.load(parser.parse_args(argv), env=env or {}, file=file)

    assert load([]).server.metrics == ""
    f = tmp_path / "agent.toml"
    f.write_text('[server]\nmetrics = "127.0.0.1:1"\n')
    assert load([], file=f).server.metrics == "127.0.0.1:1"
    assert load([], env={"PINSVC_SERVER_METRICS": "127.0.0.1:2"}, file=f).server.metrics == "127.0.0.1:2"
    assert load(["--server-metrics", "[::1]:3"], env={"PINSVC_SERVER_METRICS": "x:2"}).server.metrics == "[::1]:3"
    with pytest.raises(errors.InvalidArgument, match="server.metrics 'localhost' is not host:port"):
        load(["--server-metrics", "localhost"])
    assert parse_address("[::1]:9441") == ("::1", 9441)
    assert parse_address(":9441") == ("", 9441)


def test_build_info_runtime_health_and_no_created_series_in_either_format(m):
    from pinsvc import version
    assert value(m, "pinsvc_build_info", version=version()) == 1
    assert value(m, "pinsvc_runtime_reachable") == 0  # until the watcher says
    m.observe_runtime(True)
    assert value(m, "pinsvc_runtime_reachable") == 1
    m.applies.labels("success").inc()
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        body, content_type = m.exposition(accept)
        text = body.decode()
        assert 'pinsvc_build_info{version="' in text and "pinsvc_apply_total" in text, content_type
        assert "_created" not in text, content_type
