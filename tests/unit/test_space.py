from pinsvc.config import GiB, SpaceSettings
from pinsvc.core.space import FsStat, plan_space
from pinsvc.model import Layer

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
