"""The Warmer's decisions against a fake cache (pinsvc/warm/stage.py): each blob fetched
once, starts paced at the budget, held blobs free, windows honoured, shared fetches,
durable state, failures. The real cache is in tests/e2e/test_warm.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pinsvc.mirrors.resolve import Endpoint
from pinsvc.refs import parse_reference
from pinsvc.warm.plan import PAUSED, WAITING, WARMED
from pinsvc.warm.registry import CACHE_UNAVAILABLE, NOT_IN_CACHE, CacheError
from pinsvc.warm.routes import Route
from pinsvc.warm.settings import WarmSettings
from pinsvc.warm.stage import Warmer
from pinsvc.warm.window import Windows, parse

CACHE = "127.0.0.1:5000"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(*layers: tuple[str, int]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 100,
                      "digest": digest(json.dumps(layers).encode())},
           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": size,
                       "digest": digest(name.encode())} for name, size in layers]}
    return json.dumps(doc).encode()


class FakeCache:
    """A pull-through cache: a probe of a blob it lacks starts its fetch, which takes
    `fetch_seconds`; held blobs answer at once."""

    def __init__(self, manifests: dict[str, bytes], *, fetch_seconds: float = 0.0, held: set[str] = frozenset(),
                 stores: bool = True):
        self.manifests = manifests
        self.fetch_seconds, self.stores = fetch_seconds, stores
        self.held = set(held)
        self.started: dict[str, float] = {}  # blob key -> when its fetch started
        self.fetches: list[str] = []
        self.probes: list[tuple[float, str]] = []
        self.verified: list[str] = []
        self.insecure_hosts: set[str] = set()
        self.down = False

    async def manifest(self, ref) -> bytes:
        if self.down:
            raise CacheError(ref.host, CACHE_UNAVAILABLE, f"manifest {ref}: cannot connect: Connection refused")
        return self.manifests[ref.digest]

    async def probe(self, blob) -> bool:
        now = time.monotonic()
        self.probes.append((now, blob.key))
        if blob.key in self.held:
            return True
        if blob.key not in self.started:
            self.started[blob.key] = now
            self.fetches.append(blob.key)
        elif self.stores and now - self.started[blob.key] >= self.fetch_seconds:
            self.held.add(blob.key)
            return True
        return False

    async def verify(self, blob) -> None:
        assert blob.key in self.held, f"{blob.key} verified before the cache held it"
        self.verified.append(blob.key)

    async def aclose(self) -> None:
        pass


def images(*manifests_: bytes) -> tuple[list[str], dict[str, bytes]]:
    refs = [f"upstream.example.invalid/app{i}@{digest(body)}" for i, body in enumerate(manifests_)]
    return refs, {digest(body): body for body in manifests_}


def routes(refs):
    out = {}
    for text in refs:
        image = parse_reference(text)
        cached = parse_reference(f"{CACHE}/{image.path}@{image.digest}")
        out[text] = Route(image, Endpoint(cached, mirror=True, insecure=True), "")
    return out


def warmer(cache: FakeCache, **settings) -> Warmer:
    return Warmer(WarmSettings(Path("/nonexistent"), **settings), client=cache, routes=routes)


def test_every_blob_once_verified_and_the_progress_adds_up():
    refs, bodies = images(manifest(("base", 1000), ("a", 500)), manifest(("base", 1000), ("b", 300)))
    cache = FakeCache(bodies)
    done: set[str] = set()
    seen = []
    result = asyncio.run(warmer(cache).warm(refs, done=done, on_progress=lambda p: seen.append(p.state)))
    # app0 and app1 are two repositories: the base layer is a blob of each (distribution links per repository)
    assert sorted(cache.fetches) == sorted(done) == sorted(cache.verified)
    assert len(cache.fetches) == 6, "2 configs, 2 x base, a, b"
    assert (result.state, result.blobs_done, result.bytes_done) == (WARMED, 6, 2 * 1000 + 500 + 300 + 2 * 100)
    assert result.bytes_fetched == result.bytes_done and seen[-1] == WARMED


def test_fetches_start_at_the_budget_and_held_blobs_cost_none_of_it():
    layers = [(f"l{i}", 200_000 if i < 2 else 100_000) for i in range(5)]
    refs, bodies = images(manifest(*layers))  # the held ones first: the biggest go first
    held = {f"{CACHE}/app0@{digest(b'l0')}", f"{CACHE}/app0@{digest(b'l1')}"}
    cache = FakeCache(bodies, held=held)
    t0 = time.monotonic()
    asyncio.run(warmer(cache, rate=1_000_000).warm(refs))
    starts = sorted(cache.started.values())
    assert len(starts) == 4, "3 layers and the config: the 2 held layers are not fetched"
    gaps = [round(b - a, 2) for a, b in zip(starts, starts[1:])]
    assert gaps[:2] == [0.1, 0.1], f"100 kB at 1 MB/s: one start every 0.1 s, got {gaps}"
    assert starts[0] - t0 < 0.05, "the held blobs gave their slots back"


def test_nothing_starts_while_the_window_is_closed_and_the_warm_goes_on_when_it_opens():
    refs, bodies = images(manifest(("x", 1000)))
    cache = FakeCache(bodies)
    opens = time.monotonic() + 0.4
    closed = Windows((parse("end=2000-01-01T00:00:00Z"),))
    states = []

    def windows():
        return Windows() if time.monotonic() >= opens else closed

    result = asyncio.run(warmer(cache).warm(refs, windows=windows, on_progress=lambda p: states.append(p.state)))
    assert min(t for t, _ in cache.probes) >= opens
    assert states[0] == WAITING and result.state == WARMED


def test_a_window_closing_mid_warm_pauses_it_and_the_next_opening_resumes_it():
    refs, bodies = images(manifest(*[(f"l{i}", 100_000) for i in range(4)]))
    cache = FakeCache(bodies)
    t0 = time.monotonic()
    closed = Windows((parse("end=2000-01-01T00:00:00Z"),))

    def windows():  # open, closed from 0.15 s to 0.6 s (an edited annotation), open again
        return closed if 0.15 <= time.monotonic() - t0 < 0.6 else Windows()

    states = []
    result = asyncio.run(warmer(cache, rate=1_000_000).warm(refs, windows=windows,
                                                             on_progress=lambda p: states.append(p.state)))
    starts = sorted(t - t0 for t in cache.started.values())
    assert not [t for t in starts if 0.15 <= t < 0.6], starts
    assert starts[0] < 0.15 and starts[-1] >= 0.6
    assert PAUSED in states and result.state == WARMED and result.blobs_done == 5


def test_concurrent_warms_of_overlapping_sets_fetch_each_blob_once():
    shared = manifest(("base", 1000), ("shared", 2000))
    refs, bodies = images(shared, manifest(("own", 10)))
    cache = FakeCache(bodies, fetch_seconds=0.1)
    w = warmer(cache)

    async def both():
        return await asyncio.gather(w.warm(refs[:1]), w.warm(refs))

    first, second = asyncio.run(both())
    assert len(cache.fetches) == len(set(cache.fetches)) == 5
    assert first.blobs_done == 3 and second.blobs_done == 5


def test_verified_blobs_in_the_durable_state_are_not_looked_at_again():
    refs, bodies = images(manifest(("a", 10), ("b", 20)))
    cache = FakeCache(bodies)
    done: set[str] = set()
    asyncio.run(warmer(cache).warm(refs, done=done))
    again = FakeCache(bodies)
    result = asyncio.run(warmer(again).warm(refs, done=set(done)))
    assert again.probes == [] and result.blobs_done == 3 and result.bytes_fetched == 0


def test_a_cache_that_never_stores_the_blob_fails_the_warm_naming_it():
    refs, bodies = images(manifest(("a", 10)))
    with pytest.raises(CacheError) as e:
        asyncio.run(warmer(FakeCache(bodies, stores=False), stall_seconds=0.3).warm(refs))
    assert e.value.reason == NOT_IN_CACHE and f"cache {CACHE}: blob {CACHE}/app0@" in str(e.value)


def test_a_cache_that_is_down_fails_the_warm_with_its_reason():
    refs, bodies = images(manifest(("a", 10)))
    cache = FakeCache(bodies)
    cache.down = True
    with pytest.raises(CacheError) as e:
        asyncio.run(warmer(cache).warm(refs))
    assert e.value.reason == CACHE_UNAVAILABLE and str(e.value).startswith(f"cache {CACHE}: manifest ")


def test_an_image_that_is_not_mirrored_is_named_and_not_warmed():
    refs, bodies = images(manifest(("a", 10)))

    def unmirrored(texts):
        return {t: Route(parse_reference(t), None, "") for t in texts}

    cache = FakeCache(bodies)
    result = asyncio.run(Warmer(WarmSettings(Path("/x")), client=cache, routes=unmirrored).warm(refs))
    assert result.blobs_total == 0 and "is not mirrored in registries.conf: not warmed" in result.message
    assert datetime.now(timezone.utc) >= result.eta
