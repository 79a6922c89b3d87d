"""The space check: the pure plan, then what SpaceChecker reads through core's ports (fakes)."""

import pytest

from pinsvc import config, errors
from pinsvc.config import GiB, SpaceSettings
from pinsvc.core import space
from pinsvc.core.space import FsStat, SpaceChecker, plan_space
from pinsvc.model import (ImageEvent, ImageEventKind, Layer, PinnedImageSet, RuntimeImage, SizedImage,
                          StageEvent)
from pinsvc.refs import parse_reference
from tests.unit.fakes import FakeManifests, FakeRuntime, NoMirrors, agent_settings, fake_agent

MiB = 1 << 20
BASE = Layer("sha256:base", 100 * MiB)


def fs(free=100 * GiB, total=200 * GiB, used=50 * GiB):
    return FsStat("/var/lib/containers", free, total, used)


def layers(**unique):
    return {name: (BASE, Layer(f"sha256:{name}", size * MiB)) for name, size in unique.items()}


def test_shared_layers_count_once_and_present_images_not_at_all():
    plan = plan_space(["a", "b", "c"], {"c"}, layers(a=10, b=20), set(), fs(), SpaceSettings())
    assert plan.compressed_bytes == (100 + 10 + 20) * MiB
    assert plan.required_bytes == 2 * plan.compressed_bytes
    by_image = {p.image: p for p in plan.images}
    assert by_image["b"].layers_shared == 1 and by_image["b"].new_bytes == 20 * MiB
    assert by_image["c"].present and plan.fits and plan.missing == ("a", "b")


def test_layers_already_on_the_node_are_not_counted():
    plan = plan_space(["a"], set(), layers(a=10), {"sha256:base"}, fs(), SpaceSettings())
    assert plan.compressed_bytes == 10 * MiB


def test_minimum_free_refuses_with_the_numbers():
    plan = plan_space(["a"], set(), layers(a=0), set(), fs(free=16 * GiB + 100 * MiB), SpaceSettings())
    assert not plan.fits
    assert "200.0 MiB needed (100.0 MiB compressed x 2)" in plan.verdict
    assert "16.1 GiB free" in plan.verdict and "minimum free of 16.0 GiB" in plan.verdict


def test_gc_threshold_refuses():
    settings = SpaceSettings(min_free_bytes=0, max_usage_percent=85)
    plan = plan_space(["a"], set(), layers(a=0), set(), fs(free=100 * GiB, total=200 * GiB, used=170 * GiB - 100 * MiB),
                      settings)
    assert not plan.fits and "above the threshold of 85%" in plan.verdict


def test_nothing_missing_always_fits():
    plan = plan_space(["a"], {"a"}, {}, set(), fs(free=0, used=200 * GiB), SpaceSettings())
    assert plan.fits and plan.required_bytes == 0


# == what the space check reads, and what it says (fakes of core/ports.py) ==================

A, B, C = ("quay.io/org/a@sha256:" + "a" * 64, "quay.io/org/b@sha256:" + "b" * 64, "r.io/c@sha256:" + "c" * 64)
MIRROR = "mirror.local:5000/org"


def test_the_plan_names_the_endpoint_of_each_image_and_the_mirrors_in_the_verdict():
    plan = plan_space([A, B, C], set(), {A: (BASE,), B: (BASE,), C: (BASE,)}, set(), fs(), SpaceSettings(),
                      via={A: f"{MIRROR}/a", B: f"{MIRROR}/a", C: "r.io/c"})
    assert [p.via for p in plan.images] == [f"{MIRROR}/a", f"{MIRROR}/a", "r.io/c"]
    assert plan.verdict.startswith("fits: ")
    assert plan.verdict.endswith(f"; sized via {MIRROR}/a (2 images)"), "its own registry is not named"


def test_a_layer_the_node_has_by_diff_id_is_not_counted():
    own = (Layer("sha256:gz-base", 100 * MiB, diff_id="sha256:tar-base"), Layer("sha256:gz-a", 10 * MiB))
    plan = plan_space(["a"], set(), {"a": own}, {"sha256:tar-base"}, fs(), SpaceSettings())
    assert plan.compressed_bytes == 10 * MiB and plan.images[0].layers_shared == 1


def test_unsized_images_are_never_reported_as_all_present():
    plan = plan_space([], set(), {}, set(), fs(), SpaceSettings(), unsized=2)
    assert "all 0 images are present" not in plan.verdict
    assert plan.verdict == "0 of 2 images present; nothing to pull but the 2 that could not be sized"
    plan = plan_space(["a"], set(), layers(a=1), set(), fs(), SpaceSettings(), unsized=1)
    assert plan.verdict.endswith("; 1 more images could not be sized and are left out")


def space_settings(tmp_path, **space) -> config.Settings:
    return config.replace(agent_settings(tmp_path), space={"enabled": True, "min_free_bytes": 0,
                                                           "max_usage_percent": 100.0, **space})


async def test_an_apply_whose_missing_images_cannot_be_sized_does_not_say_they_are_present(tmp_path):
    settings = space_settings(tmp_path)
    down = errors.RegistryError(f"image {A}: none of its 2 endpoints served it: ...")
    manifests = FakeManifests({A: down, B: down})
    runtime = FakeRuntime(settings.dropin_path)
    agent = fake_agent(settings, runtime, manifests=manifests)
    events = []
    outcome = await agent.apply([PinnedImageSet("web", 1, (A, B))], emit=events.append)
    messages = [e.message for e in events if isinstance(e, StageEvent)]
    assert not [m for m in messages if "are present" in m], messages
    assert [e.kind for e in events if isinstance(e, ImageEvent) and e.image == A] == [ImageEventKind.FAILED]
    assert outcome.error is not None and runtime.pulls == []


class LayeredRuntime(FakeRuntime):
    """Reports diff_ids for its images; counts the calls."""

    def __init__(self, *args, diff_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.diff_ids = diff_ids or {}
        self.status_calls: list[str] = []

    async def list_images(self):
        return [RuntimeImage(id=i[-12:], repo_digests=(i,)) for i in sorted(self.present)]

    async def image_diff_ids(self, image):
        self.status_calls.append(image)
        return self.diff_ids.get(image, ())


class CachedManifests(FakeManifests):
    def __init__(self, sized, cached):
        super().__init__(sized)
        self.cached = cached

    async def cached_layers(self, digests):
        return {d: self.cached[d] for d in digests if d in self.cached}


@pytest.mark.parametrize("min_free_mib", [0, 96])
async def test_layers_on_the_node_come_from_the_manifest_cache_and_the_runtime_never_a_registry(
        tmp_path, monkeypatch, min_free_mib):
    """B was sized (its manifest is cached); C was pulled by someone else. Only A, the missing
    image, is asked of a registry. Counting what the cache knows (the base of B), A needs
    3 MiB, 6 MiB on disk: that fits 100 MiB free with 0 to keep free; the runtime is not
    asked. With 96 MiB to keep free it does not fit: then the runtime tells C's diff_ids,
    A's come with its config, and the layer C shares is not counted: 2 MiB on disk, fits."""
    monkeypatch.setattr(space, "statvfs", lambda mountpoint: FsStat(mountpoint, 100 * MiB, 100 * MiB, 0))
    settings = space_settings(tmp_path, min_free_bytes=min_free_mib * MiB)
    base, shared, own = (Layer("sha256:gz-base", 1 * MiB, "sha256:tar-base"),
                         Layer("sha256:gz-shared", 2 * MiB, "sha256:tar-shared"), Layer("sha256:gz-a", 1 * MiB))
    runtime = LayeredRuntime(settings.dropin_path, present=(B, C), diff_ids={C[-12:]: ("sha256:tar-shared",)})
    manifests = CachedManifests({A: SizedImage((base, shared, own), f"{MIRROR}/a")},
                                {B.partition("@")[2]: (Layer("sha256:gz-base", 1 * MiB),)})
    checker = SpaceChecker(runtime, manifests, NoMirrors(), settings.space)
    plan, failed = await checker.plan([A, B, C])
    assert failed == {} and plan.fits and [p.present for p in plan.images] == [False, True, True]
    assert plan.images[0].via == f"{MIRROR}/a"
    if not min_free_mib:
        assert manifests.asked == [([parse_reference(A)], False)], "present images are not asked of a registry"
        assert plan.compressed_bytes == 3 * MiB and runtime.status_calls == []
        return
    assert manifests.asked == [([parse_reference(A)], False), ([parse_reference(A)], True)]
    assert plan.compressed_bytes == 1 * MiB and runtime.status_calls == [C[-12:]], "B is known from the cache"
    await checker.plan([A, B, C])
    assert runtime.status_calls == [C[-12:]], "an image id's layers never change: asked once"


async def test_the_deadline_is_handed_to_the_manifest_source(tmp_path):
    settings = space_settings(tmp_path, deadline_seconds=7.5)
    seen = {}

    class Slow(FakeManifests):
        async def many(self, wanted, *, diff_ids=False, timeout=None):
            seen["timeout"] = timeout
            return await super().many(wanted)

    runtime = LayeredRuntime(settings.dropin_path)
    checker = SpaceChecker(runtime, Slow({A: SizedImage(())}), NoMirrors(), settings.space)
    await checker.plan([A])
    assert 7.0 < seen["timeout"] <= 7.5

