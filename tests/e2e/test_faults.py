"""Faults against the real peers (issue 5): a misbehaving registry, a registry that is down,
CRI-O killed mid-Apply, reloads that do not take effect.

CRI-O pulls through `FaultProxy`, our HTTP/1.1 proxy in front of the session registry, so
faults hit exactly the requests a test names (blob GETs, one repository's manifests, ...).
Everything here runs against a CRI-O of this module (own root, registries = the proxy), so
killing and restarting it never disturbs the session's CRI-O. Every Apply is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from pinsvc_client import SetSpec
from devenv import images as fixture_images
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.faultproxy import BLOBS, FaultProxy
from tests.e2e.conftest import agent_maker, apply, clean_node
from tests.e2e.helpers import Kind, Stage, condition, final_status, set_status, stages

DROPIN = "50-pinned-images"
APPLY_BOUND = 60.0
"""Seconds any single Apply in this module may take before the test fails as hung."""


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy(registry):
    p = FaultProxy(registry.host)
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def fault_crio(peers_root, proxy):
    node = Crio(peers_root / "faults-crio", registries=[proxy.host])
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def refs(workload, proxy) -> dict[str, str]:
    """The workload's references, pulled through the proxy (same repo and digest)."""
    return {name: proxy.ref(ref) for name, ref in workload.items()}


@pytest.fixture(scope="module")
def built():
    """The workload's image objects (blob digests, sizes)."""
    return fixture_images.small_workload()


@pytest.fixture
def fnode(fault_crio, proxy):
    """A clean node behind a healthy proxy."""
    if not proxy.running:
        proxy.start()
    proxy.clear_faults()
    if not fault_crio.running:
        fault_crio.start()
    clean_node(fault_crio)
    proxy.reset_counters()
    yield fault_crio
    proxy.clear_faults()


@pytest.fixture
def make_agent(tmp_path, fnode, proxy):
    """Agents against the module's CRI-O, pulling through the proxy, short backoffs."""
    yield from agent_maker(tmp_path, fnode, proxy)


# ---- helpers -------------------------------------------------------------------------------

async def bounded_apply(agent, *sets, bound: float = APPLY_BOUND, **options):
    """(events, error, seconds) of an Apply that must end within `bound` seconds."""
    t0 = time.monotonic()
    events, error = await asyncio.wait_for(apply(agent, *sets, **options), bound)
    return events, error, time.monotonic() - t0


def image_event_list(events, kind, image: str | None = None) -> list:
    return [e.image for e in events if e.WhichOneof("event") == "image" and e.image.kind == kind
            and (image is None or e.image.image == image)]


def repo_path(ref: str) -> str:
    """`/v2/<repo>/` of a reference, for matching one image's requests."""
    return "^/v2/" + ref.split("/", 1)[1].split("@")[0] + "/"


async def wait_reconnected(agent: AgentProcess, image: str, bound: float) -> float:
    """Seconds until the agent's CRI calls work again (CheckSpace lists the runtime's images)."""
    t0 = time.monotonic()
    async with agent.client() as client:
        while True:
            try:
                await client.check_space([image])
                return time.monotonic() - t0
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and "not reachable" in e.details(), e
                assert time.monotonic() - t0 < bound, f"the agent did not reconnect within {bound} s: {e.details()}"
            await asyncio.sleep(0.02)


def dropin_bytes(node: Crio) -> bytes | None:
    path = node.dropin_dir / DROPIN
    return path.read_bytes() if path.exists() else None


def state_pinned(agent: AgentProcess) -> list[str]:
    return json.loads((agent.workdir / "state" / "state.json").read_text())["pinned"]


# ---- registry faults: retried where they should be --------------------------------------------

TRANSIENT = {
    # CRI-O (containers/image) does not retry a 500: each one fails a pull attempt.
    "http-500": (dict(kind="status", status=500, count=2), "500"),
    # containers/image retries a 429 itself, 5 times, waiting Retry-After: 5 x 429 fail one
    # attempt of ours after ~4 s.
    "http-429-retry-after": (dict(kind="status", status=429, retry_after=1, count=5), "too many requests"),
    # Go retries a GET once on a reused connection that was reset: 2 resets fail an attempt.
    "connection-reset": (dict(kind="reset", count=2), "connection reset"),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", list(TRANSIENT))
async def test_transient_blob_faults_are_retried_and_the_apply_converges(case, make_agent, fnode, proxy, refs):
    params, reason = TRANSIENT[case]
    agent = make_agent(**{"pull-max-attempts": "4"})
    image = refs["app-a"]
    fault = proxy.set_fault(match=BLOBS, method="GET", **params)
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (image, refs["oci"])), parallelism=1)
    assert error is None, error
    assert fault.exhausted, f"the fault must have been hit {params['count']} times, was {fault.hits}"
    retrying = image_event_list(events, Kind.RETRYING)
    assert retrying, "a transient registry failure is retried"
    assert all(reason in r.reason.lower() for r in retrying), [r.reason for r in retrying]
    assert not image_event_list(events, Kind.FAILED)
    pulled = {e.image: e for e in image_event_list(events, Kind.PULLED)}
    assert set(pulled) == {image, refs["oci"]}
    assert sum(p.attempt for p in pulled.values()) == 2 + len(retrying), "one attempt per RETRYING more"
    assert {image, refs["oci"]} <= fnode.pinned_images()
    status = final_status(events)
    assert condition(status, "PinnedImageSetsDegraded").status == "False"
    detail = {i.image: i for i in status.images}
    assert detail[image].attempts == pulled[image].attempt and detail[image].pinned
    if case == "http-429-retry-after":
        hits = [r.started for r in proxy.requests if r.fault == "status"]
        gaps = [b - a for a, b in zip(hits, hits[1:])]
        assert min(gaps) >= 0.9, f"Retry-After: 1 must be honoured, gaps {gaps}"
    print(f"{case}: {took:.2f}s, {len(retrying)} retries, fault hits {fault.hits}")


@pytest.mark.timeout(60)
async def test_rate_limited_manifest_is_retried_by_the_space_check_after_retry_after(make_agent, fnode, proxy, refs):
    """The agent's own manifest client (space check) honours 429 Retry-After."""
    agent = make_agent()
    image = refs["app-b"]
    fault = proxy.set_fault("status", match=repo_path(image) + "manifests/", status=429, retry_after=1, count=2)
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (image,)))
    assert error is None, error
    assert fault.exhausted
    manifest_gets = [r for r in proxy.requests if r.path.startswith(repo_path(image)[1:]) and "/manifests/" in r.path]
    limited = [r.started for r in manifest_gets if r.fault == "status"]
    after = [r.started for r in manifest_gets if r.fault == "pass"]
    assert len(limited) == 2 and after, [(r.fault, r.status) for r in manifest_gets]
    assert limited[1] - limited[0] >= 0.95 and after[0] - limited[1] >= 0.95, "waited Retry-After each time"
    assert Stage.SPACE_CHECKED in stages(events)
    assert image in fnode.pinned_images()
    print(f"429 on the manifest: {took:.2f}s")


@pytest.mark.timeout(60)
async def test_blob_reset_mid_body_is_resumed_or_retried(make_agent, fnode, proxy, refs, built):
    """A connection reset after 64 KiB of the 1 MiB base layer."""
    agent = make_agent()
    base = built["app-a"].layers[0]
    fault = proxy.set_fault("reset", match=f"/blobs/{base.digest}$", after_bytes=64 << 10, count=1)
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (refs["app-a"],)))
    assert error is None, error
    assert fault.exhausted
    gets = [r for r in proxy.requests if r.path.endswith(base.digest)]
    assert gets[0].fault == "reset" and gets[0].body_bytes == 64 << 10 and gets[0].outcome == "reset"
    assert refs["app-a"] in fnode.pinned_images()
    retries = image_event_list(events, Kind.RETRYING)
    resumed = [r.range for r in gets[1:]]
    # CRI-O (containers/image) resumes the body itself with a Range request; if it ever stops
    # doing so, the agent's retry must cover it.
    assert resumed == [f"bytes={64 << 10}-"] or retries, (resumed, retries)
    print(f"reset mid-body: {took:.2f}s, RETRYING {len(retries)}, later GETs of the layer with Range {resumed}")


# ---- registry faults that must not be retried -------------------------------------------------

PERMANENT = {  # status -> (gRPC code, words of the space check's / of the runtime's error)
    404: (grpc.StatusCode.NOT_FOUND, ("manifest unknown", "image not found in the registry")),
    401: (grpc.StatusCode.PERMISSION_DENIED, ("access denied and no credentials", "the registry refused access")),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("space_check", [True, False], ids=["space-check", "runtime-pull"])
@pytest.mark.parametrize("status_code", list(PERMANENT))
async def test_permanent_manifest_errors_fail_that_image_clearly_without_retries(
        status_code, space_check, make_agent, fnode, proxy, refs):
    agent = make_agent(**{"space-enabled": space_check, "pull-max-attempts": "4"})
    bad, good = refs["app-a"], refs["oci"]
    proxy.set_fault("status", match=repo_path(bad) + "manifests/", status=status_code)
    events, error, took = await bounded_apply(agent, SetSpec("good", 1, (good,)), SetSpec("bad", 3, (bad,)))
    code, words = PERMANENT[status_code]
    assert error is not None and error.code() == code, error
    assert bad in error.details() and good not in error.details()
    assert words[0 if space_check else 1] in error.details(), error.details()
    assert not image_event_list(events, Kind.RETRYING), "a permanent error is not retried"
    (failed,) = image_event_list(events, Kind.FAILED)
    assert failed.image == bad and failed.attempt <= 1
    if space_check:
        assert not image_event_list(events, Kind.PULLING, bad), "refused before any pull"
    manifest_gets = proxy.count(repo_path(bad) + "manifests/")
    # the agent's client asks once; CRI-O asks twice (as an image, then as an OCI artifact)
    assert manifest_gets == (1 if space_check else 2), manifest_gets
    status = final_status(events)
    assert set_status(status, "good").current_generation == 1
    bad_set = set_status(status, "bad")
    assert (bad_set.current_generation, bad_set.last_failed_generation) == (0, 3)
    assert bad in bad_set.last_failed_generation_error
    detail = {i.image: i for i in status.images}
    assert detail[bad].last_error and not detail[bad].present
    assert condition(status, "PinnedImageSetsDegraded").status == "True"
    assert good in fnode.pinned_images() and bad not in fnode.pinned_images()
    print(f"HTTP {status_code} ({'space check' if space_check else 'runtime pull'}): {took:.2f}s: {failed.reason}")


# ---- stalls and slow bodies: attempts time out, the Apply never hangs -------------------------

@pytest.mark.timeout(60)
async def test_a_stalled_blob_times_out_the_attempt_and_the_retry_succeeds(make_agent, fnode, proxy, refs):
    agent = make_agent()
    fault = proxy.set_fault("stall", match=BLOBS, seconds=30, count=1)
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (refs["oci"],)), attempt_timeout=1.5)
    assert error is None, error
    assert fault.exhausted
    (retry,) = image_event_list(events, Kind.RETRYING)
    assert "timed out after 1.5s" in retry.reason
    assert took < 10, f"the stall (30 s) must not be waited out: {took:.2f}s"
    assert refs["oci"] in fnode.pinned_images()
    print(f"stall once: {took:.2f}s")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["stall", "slow"])
async def test_a_registry_that_never_delivers_fails_clearly_and_bounded(kind, make_agent, fnode, proxy, refs):
    agent = make_agent(**{"pull-max-attempts": "2", "pull-attempt-timeout-seconds": "1.5"})
    if kind == "stall":
        proxy.set_fault("stall", match=BLOBS, seconds=40)
    else:  # 1.3 MiB at 32 KiB/s: ~40 s
        proxy.set_fault("slow", match=BLOBS, bytes_per_second=32 << 10)
    image = refs["app-a"]
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (image,)), bound=30)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert image in error.details() and "attempt timed out after 1.5s" in error.details()
    assert len(image_event_list(events, Kind.RETRYING)) == 1
    (failed,) = image_event_list(events, Kind.FAILED)
    assert failed.attempt == 2
    assert took < 8, f"two attempts of 1.5 s plus a backoff, not the registry's pace: {took:.2f}s"
    if kind == "slow":
        trickled = [r for r in proxy.requests if r.fault == "slow"]
        assert any(0 < r.body_bytes < 1 << 20 for r in trickled), "the attempt was cut mid-body"
    status = final_status(events)
    assert "timed out" in set_status(status, "web").last_failed_generation_error
    assert condition(status, "PinnedImageSetsDegraded").status == "True"
    assert dropin_bytes(fnode) is None and not fnode.pinned_images()
    print(f"{kind} forever: {took:.2f}s")


@pytest.mark.timeout(60)
async def test_a_stalled_manifest_in_the_space_check_is_bounded(make_agent, fnode, proxy, refs):
    agent = make_agent(**{"registry-timeout-seconds": "1"})
    image = refs["three-layers"]
    proxy.set_fault("stall", match=repo_path(image) + "manifests/", seconds=40)
    events, error, took = await bounded_apply(agent, SetSpec("web", 1, (image, refs["oci"])), bound=30)
    assert error is not None, "the image whose manifest never comes fails"
    assert image in error.details() and "timed out" in error.details(), error.details()
    assert [e.image for e in image_event_list(events, Kind.FAILED)] == [image]
    assert took < 10, f"{took:.2f}s"
    assert refs["oci"] not in fnode.pinned_images(), "a failed set pins nothing new"
    print(f"stalled manifest: {took:.2f}s: {error.details()}")


# ---- the registry down for the whole Apply -----------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("space_check", [True, False], ids=["space-check", "runtime-pull"])
async def test_registry_down_for_the_whole_apply_changes_nothing_and_recovers(
        space_check, make_agent, fnode, proxy, refs):
    agent = make_agent(**{"space-enabled": space_check})
    _, error, _ = await bounded_apply(agent, SetSpec("web", 1, (refs["oci"],)))
    assert error is None, error
    before_dropin, before_state = dropin_bytes(fnode), state_pinned(agent)
    before_pins = fnode.pinned_images()
    assert before_dropin and before_state == [refs["oci"]]
    wanted = (refs["oci"], refs["app-a"], refs["app-b"])
    proxy.stop()
    try:
        events, error, took = await bounded_apply(agent, SetSpec("web", 2, wanted))
    finally:
        proxy.start()
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    message = error.details()
    assert proxy.host in message and "connection refused" in message.lower(), message
    assert {e.image for e in image_event_list(events, Kind.FAILED)} == {refs["app-a"], refs["app-b"]}
    assert dropin_bytes(fnode) == before_dropin, "the drop-in is untouched"
    assert state_pinned(agent) == before_state, "the pinned list is untouched"
    assert fnode.pinned_images() == before_pins
    status = final_status(events)
    web = set_status(status, "web")
    assert (web.desired_generation, web.current_generation, web.last_failed_generation) == (2, 1, 2)
    degraded = condition(status, "PinnedImageSetsDegraded")
    assert degraded.status == "True" and proxy.host in degraded.message and "web" in degraded.message
    async with agent.client() as client:  # the same, read back
        assert condition(await client.status(), "PinnedImageSetsDegraded").message == degraded.message
    # The registry is back: the same Apply converges.
    events, error, _ = await bounded_apply(agent, SetSpec("web", 2, wanted))
    assert error is None, error
    assert set(wanted) <= fnode.pinned_images()
    assert condition(final_status(events), "PinnedImageSetsDegraded").status == "False"
    print(f"registry down ({'space check' if space_check else 'runtime pull'}): failed in {took:.2f}s: {message}")


# ---- CRI-O killed and restarted during an Apply ------------------------------------------------

CRIO_KILL = {
    # backoffs (0.3 s doubling to 1 s, 8 attempts) outlast CRI-O's ~1.2 s absence
    "retries-outlast-restart": {"pull-max-attempts": "8", "pull-backoff-initial-seconds": "0.3",
                                "pull-backoff-max-seconds": "1"},
    # 2 attempts 0.1 s apart, not waiting for a reconnect, are spent before CRI-O is back:
    # the Apply fails, clearly
    "retries-exhausted": {"pull-max-attempts": "2", "pull-backoff-initial-seconds": "0.1",
                          "pull-backoff-max-seconds": "0.1", "cri-connect-wait-seconds": "0"},
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CRIO_KILL))
async def test_crio_killed_during_pulls_and_restarted_the_agent_reconnects_and_converges(
        case, make_agent, fnode, proxy, refs):
    agent = make_agent(**CRIO_KILL[case], **{"verify-timeout-seconds": "10"})
    wanted = (refs["app-a"], refs["app-b"], refs["oci"], refs["three-layers"])
    proxy.set_fault("slow", match=BLOBS, bytes_per_second=192 << 10)  # the 1 MiB base: ~5 s
    task = asyncio.create_task(bounded_apply(agent, SetSpec("web", 1, wanted)))
    in_flight = await asyncio.to_thread(
        proxy.wait_for, lambda rs: any(r.fault == "slow" and r.body_bytes > 64 << 10 for r in rs), 20)
    assert in_flight, "pulls must be under way when CRI-O is killed"
    old_pid = fnode.pid
    fnode.kill()
    killed_at = time.monotonic()
    await asyncio.sleep(1)
    proxy.clear_faults()
    await asyncio.to_thread(fnode.start)
    restarted_after = time.monotonic() - killed_at
    assert fnode.pid != old_pid
    events, error, took = await task
    retrying = image_event_list(events, Kind.RETRYING)
    assert retrying, "pulls cut by the kill are retried"
    assert all("container runtime is not reachable" in r.reason for r in retrying), [r.reason for r in retrying]
    if case == "retries-outlast-restart":
        assert error is None, error
        outcome = "converged within its retries"
        assert set(wanted) <= fnode.pinned_images()
        assert set_status(final_status(events), "web").current_generation == 1
    else:
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        outcome = f"failed: {error.code().name}: {error.details()[:300]}"
        assert "container runtime" in error.details() and "not reachable" in error.details()
        failed = image_event_list(events, Kind.FAILED)
        assert failed and all(f.image in error.details() for f in failed)
        assert all("container runtime is not reachable" in f.reason for f in failed)
        status = final_status(events)
        assert set_status(status, "web").last_failed_generation == 1
        assert condition(status, "PinnedImageSetsDegraded").status == "True"
        assert dropin_bytes(fnode) is None, "nothing pinned"
    # The agent reconnects (its CRI channel retries the socket with a backoff of at most
    # ~1.2 s; without cri-connect-wait-seconds a call inside that window fails fast with
    # "not reachable" although CRI-O is back), then the next Apply converges.
    reconnected = await wait_reconnected(agent, refs["oci"], bound=5)
    events2, error2, took2 = await bounded_apply(agent, SetSpec("web", 1, wanted))
    assert error2 is None, error2
    assert set(wanted) <= fnode.pinned_images()
    async with agent.client() as client:
        status = await client.status()
    assert set_status(status, "web").current_generation == 1
    assert all(i.pinned for i in status.images if i.image in wanted)
    causes = sorted({r.reason.replace(r.image, "IMAGE")[:100] for r in retrying})
    print(f"CRI-O killed mid-pull ({case}), back after {restarted_after:.2f}s; first Apply {took:.2f}s "
          f"{outcome}; {len(retrying)} retries, causes {causes}; agent's CRI calls work again "
          f"{reconnected:.2f}s after CRI-O was back; next Apply {took2:.2f}s")


@pytest.mark.timeout(90)
async def test_an_apply_right_after_a_crio_restart_waits_for_the_reconnect_and_succeeds(make_agent, fnode, refs):
    """While CRI-O was down a status call found it unreachable, so the agent's CRI channel
    reconnects with a backoff (up to ~1.2 s). The Apply sent right after CRI-O is back waits
    for that reconnect (`--cri-connect-wait-seconds`, 2 s) instead of failing as unreachable."""
    agent = make_agent()
    await pin_generation_one(agent, refs, fnode)
    fnode.kill()
    async with agent.client() as client:
        t0 = time.monotonic()
        status = await client.status()
        waited = time.monotonic() - t0
    assert waited >= 1.9, f"the status waited the connect bound for the gone runtime: {waited:.2f}s"
    web = set_status(status, "web")
    assert web.current_generation == 1 and not any(i.pinned for i in status.images), "stored status, no live pins"
    await asyncio.sleep(1.5)  # the channel's reconnect backoff reaches its maximum
    await asyncio.to_thread(fnode.start)
    wanted = (refs["oci"], refs["app-a"])
    events, error, took = await bounded_apply(agent, SetSpec("web", 2, wanted))
    assert error is None, error
    assert set(wanted) <= fnode.pinned_images()
    assert set_status(final_status(events), "web").current_generation == 2
    print(f"Apply right after a CRI-O restart: {took:.2f}s; status while CRI-O was down took {waited:.2f}s")


# ---- reloads that do not take effect -----------------------------------------------------------

async def pin_generation_one(agent, refs, fnode) -> bytes:
    _, error, _ = await bounded_apply(agent, SetSpec("web", 1, (refs["oci"],)))
    assert error is None, error
    good = dropin_bytes(fnode)
    assert good is not None and refs["oci"] in fnode.pinned_images()
    return good


def restart_with(agent: AgentProcess, **flags: str) -> None:
    agent.stop()
    agent.flags.update(flags)
    agent.start()


def sleeper(*, ignore_hup: bool) -> subprocess.Popen:
    """A harmless process that is not CRI-O (`sleep`; with `nohup` it ignores SIGHUP)."""
    argv = (["nohup"] if ignore_hup else []) + ["sleep", "120"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_failed_and_restored(events, error, fnode, good: bytes, refs) -> None:
    assert dropin_bytes(fnode) == good, "the previous drop-in is back, byte for byte"
    assert not any(p.name.startswith(".pinsvc-") or p.name.endswith(".tmp") for p in fnode.dropin_dir.rglob("*"))
    pins = fnode.pinned_images()
    assert refs["oci"] in pins and refs["app-a"] not in pins
    status = final_status(events)
    web = set_status(status, "web")
    assert (web.current_generation, web.last_failed_generation) == (1, 2)
    degraded = condition(status, "PinnedImageSetsDegraded")
    assert degraded.status == "True" and error.details()[:60] in degraded.message


@pytest.mark.timeout(60)
async def test_signal_to_a_pid_that_is_not_crio_is_refused_and_the_previous_dropin_restored(
        make_agent, fnode, refs, tmp_path):
    agent = make_agent()
    good = await pin_generation_one(agent, refs, fnode)
    other = sleeper(ignore_hup=False)
    try:
        pidfile = tmp_path / "wrong.pid"
        pidfile.write_text(f"{other.pid}\n")
        restart_with(agent, **{"reload-pidfile": str(pidfile)})
        events, error, took = await bounded_apply(agent, SetSpec("web", 2, (refs["oci"], refs["app-a"])))
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert f"pid {other.pid} from pidfile {pidfile} is 'sleep', not 'crio'" in error.details()
        assert other.poll() is None, "the other process was not signalled"
        assert Stage.DROPIN_WRITTEN in stages(events) and Stage.RUNTIME_RELOADED not in stages(events)
        assert_failed_and_restored(events, error, fnode, good, refs)
        print(f"non-crio pid: {took:.2f}s: {error.details()}; stages {stages(events)}")
    finally:
        other.kill()
        other.wait()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_hup", [True, False], ids=["survives-sighup", "dies-of-sighup"])
async def test_signal_to_the_wrong_process_fails_verification_and_restores(
        ignore_hup, make_agent, fnode, refs, tmp_path):
    """The pidfile names a process the agent accepts (process name `sleep`) but it is not
    CRI-O: the SIGHUP goes nowhere, the pins never appear, verification fails. When the
    SIGHUP killed that process, the reload after the restore fails too: the Apply still
    reports the failed verification, and the restore event says the reload failed."""
    agent = make_agent()
    good = await pin_generation_one(agent, refs, fnode)
    other = sleeper(ignore_hup=ignore_hup)
    try:
        pidfile = tmp_path / "wrong.pid"
        pidfile.write_text(f"{other.pid}\n")
        restart_with(agent, **{"reload-pidfile": str(pidfile), "reload-process-name": "sleep",
                               "verify-timeout-seconds": "1.5"})
        events, error, took = await bounded_apply(agent, SetSpec("web", 2, (refs["oci"], refs["app-a"])))
        assert error is not None and error.code() == grpc.StatusCode.ABORTED, error
        assert f"{refs['app-a']} is present but not pinned" in error.details()
        assert stages(events)[-3:] == [Stage.DROPIN_WRITTEN, Stage.RUNTIME_RELOADED, Stage.DROPIN_RESTORED]
        restored = [e.stage.message for e in events if e.WhichOneof("event") == "stage"][-1]
        if ignore_hup:
            assert other.poll() is None, "nohup: the SIGHUPs were ignored"
            assert "reloaded the runtime" in restored
        else:
            assert other.wait(5) == -signal.SIGHUP
            assert f"could not reload the runtime: pid {other.pid}" in restored, restored
        assert_failed_and_restored(events, error, fnode, good, refs)
        print(f"wrong process ({'survives' if ignore_hup else 'dies of'} SIGHUP): {took:.2f}s: "
              f"{error.details()}; restore: {restored}")
    finally:
        other.kill()
        other.wait()


@pytest.mark.timeout(60)
async def test_signal_to_a_crio_that_is_gone_fails_and_restores(make_agent, fnode, refs, tmp_path):
    """CRI-O restarted and the agent's pidfile still names the old, gone process."""
    agent = make_agent()
    good = await pin_generation_one(agent, refs, fnode)
    pidfile = tmp_path / "stale.pid"
    shutil.copyfile(fnode.pidfile, pidfile)
    gone = fnode.pid
    fnode.kill()
    await asyncio.to_thread(fnode.start)
    assert fnode.pid != gone
    restart_with(agent, **{"reload-pidfile": str(pidfile)})
    events, error, took = await bounded_apply(agent, SetSpec("web", 2, (refs["oci"], refs["app-a"])))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert f"pid {gone} from pidfile {pidfile} is not running" in error.details()
    assert_failed_and_restored(events, error, fnode, good, refs)
    print(f"crio gone (stale pidfile): {took:.2f}s: {error.details()}")


@pytest.mark.timeout(60)
async def test_crio_gone_during_verification_restores_the_previous_dropin(make_agent, fnode, refs, tmp_path):
    """The reload goes nowhere (a `nohup sleep` accepted as the runtime), and CRI-O dies while
    the agent waits for the pins: they cannot be verified, so the old drop-in comes back."""
    agent = make_agent()
    good = await pin_generation_one(agent, refs, fnode)
    other = sleeper(ignore_hup=True)
    try:
        pidfile = tmp_path / "wrong.pid"
        pidfile.write_text(f"{other.pid}\n")
        restart_with(agent, **{"reload-pidfile": str(pidfile), "reload-process-name": "sleep",
                               "verify-timeout-seconds": "10"})
        events = []
        error = None
        t0 = time.monotonic()
        async with agent.client() as client:
            try:
                async with asyncio.timeout(APPLY_BOUND):
                    async for event in client.apply([SetSpec("web", 2, (refs["oci"], refs["app-a"]))]):
                        events.append(event)
                        if event.WhichOneof("event") == "stage" and event.stage.stage == Stage.RUNTIME_RELOADED:
                            fnode.kill()
            except grpc.aio.AioRpcError as e:
                error = e
        took = time.monotonic() - t0
        assert not fnode.running
        assert error is not None, "pins that cannot be verified are a failure"
        assert took < 9, f"verification stops once the runtime is gone: {took:.2f}s"
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "is not reachable (ListImages)" in error.details()
        assert stages(events)[-3:] == [Stage.DROPIN_WRITTEN, Stage.RUNTIME_RELOADED, Stage.DROPIN_RESTORED]
        assert dropin_bytes(fnode) == good, "the previous drop-in is back, byte for byte"
        assert state_pinned(agent) == [refs["oci"]]
        status = final_status(events)
        assert set_status(status, "web").last_failed_generation == 2
        assert condition(status, "PinnedImageSetsDegraded").status == "True"
        print(f"crio gone during verification: {took:.2f}s: {error.code().name}: {error.details()}; "
              f"stages {stages(events)}")
    finally:
        other.kill()
        other.wait()
        if not fnode.running:
            await asyncio.to_thread(fnode.start)
