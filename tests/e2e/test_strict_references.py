"""References CRI-O cannot pull are refused at the API, before anything is touched.

Each of these once passed validation and failed later (an IPv6 host failed INTERNAL at the
pull and left the node Degraded). crictl is the witness that CRI-O refuses them too.
"""

import grpc
import pytest

from devenv.crio import CrioError
from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import set_status


def edge_references(workload) -> dict[str, str]:
    """What each reference is, -> the reference, all on the test registry's repository."""
    host, _, rest = workload["app-a"].partition("/")
    digest = rest.split("@")[1]
    port = host.rpartition(":")[2]
    return {
        "ipv6 host": f"[::1]:{port}/{rest}",
        "port 0": f"127.0.0.1:0/{rest}",
        "port 65536": f"127.0.0.1:65536/{rest}",
        "256-character name": f"{host}/" + "a" * (255 - len(host)) + f"@{digest}",
    }


async def test_edge_references_are_refused_naming_each_value_and_nothing_changes(agent, node, workload):
    _, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error is None, error
    dropin = node.dropin_dir / "50-pinned-images"
    before = (dropin.read_bytes(), dropin.stat().st_ino, dropin.stat().st_mtime_ns)
    images_before = node.images_json()["images"]

    edge = edge_references(workload)
    events, error = await apply(agent, SetSpec("web", 2, (workload["oci"], *edge.values())))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    message = error.details()
    for what, ref in edge.items():
        assert repr(ref)[:60] in message, f"{what} not named: {message}"
    assert "IPv6" in message and "outside 1-65535" in message and "at most 255" in message
    assert events == []

    async with agent.client() as client:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.check_space(list(edge.values()))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = await client.status()
    web = set_status(status, "web")
    assert (web.desired_generation, web.current_generation, web.last_failed_generation) == (1, 1, 0)

    assert (dropin.read_bytes(), dropin.stat().st_ino, dropin.stat().st_mtime_ns) == before, "drop-in touched"
    assert sorted(p.name for p in node.dropin_dir.iterdir()) == ["50-pinned-images"]
    assert node.images_json()["images"] == images_before, "something was pulled or removed"


@pytest.mark.parametrize("what, words", [("ipv6 host", "invalid reference format"),
                                         ("256-character name", "must not be more than 255 characters")])
def test_crio_refuses_the_same_references(node, workload, what, words):
    with pytest.raises(CrioError) as e:
        node.crictl("pull", edge_references(workload)[what], timeout=20)
    assert words in str(e.value)


async def test_a_refused_reference_leaves_the_status_as_it_was(agent, node, workload):
    """Before: an IPv6 reference was accepted, failed INTERNAL and left the node Degraded."""
    events, error = await apply(agent, SetSpec("v6", 1, (edge_references(workload)["ipv6 host"],)))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert events == []
    async with agent.client() as client:
        status = await client.status()
    assert list(status.pinned_image_sets) == [], "nothing recorded"
    assert not [c for c in status.conditions if c.type == "PinnedImageSetsDegraded" and c.status == "True"]
    assert not any(node.dropin_dir.iterdir())
