"""What the space check reads of the images a node already has comes from the runtime:
CRI-O's verbose ImageStatus gives the image config's diff_ids (core/space.py, source 2)."""

from __future__ import annotations

from devenv import images as fixture_images
from pinsvc.adapters.cri import CriClient


async def test_crio_reports_the_diff_ids_of_an_image_it_has(node, workload):
    built = fixture_images.small_workload()
    node.crictl("pull", workload["three-layers"], timeout=60)
    (image,) = node.images_json()["images"]
    client = CriClient(node.endpoint)
    try:
        by_id = await client.image_diff_ids(image["id"])
        by_reference = await client.image_diff_ids(workload["three-layers"])
        unknown = await client.image_diff_ids(workload["app-a"])
    finally:
        await client.close()
    assert by_id == by_reference == tuple(layer.diff_id for layer in built["three-layers"].layers)
    assert unknown == ()
