"""The controller's warm stage and windows on real peers (issue 15): a real kube-apiserver,
3 real CRI-O nodes whose registries.conf reaches the canonical name only through a site
cache (docker-registry in proxy mode) in front of an upstream behind a capped link. What
users see: the pool's PinnedImageSetsWarmed condition, its Degraded condition, the
controller's metrics, and what each CRI-O reports pinned; the link's log for the bytes."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from devenv import cluster
from devenv.site import Site, release_workload
from tests.e2e.controller.conftest import NODES, node_objects, wait_for

MiB = 1 << 20
WORKERS = NODES[:3]
PROBE_COPY = 160 * 1024


@pytest.fixture(scope="module")
def site(kube_root):
    with Site(kube_root / "site", rate=4 * MiB) as s:
        s.workload = release_workload(3)
        s.refs = s.push(s.workload)
        yield s


@pytest.fixture
def site_nodes(nodes, site, tmp_path):
    """The workers mirroring the canonical name through the (emptied) cache; afterwards
    nothing pinned, no image, no drop-in."""
    site.cache.wipe()
    site.proxy.reset_counters()
    conf = tmp_path / "registries.conf"
    conf.write_text(site.registries_conf())
    for name in WORKERS:
        crio = nodes.nodes[name].crio
        (crio.registries_conf_dir / "50-site.conf").write_text(site.registries_conf())
        crio.reload()
    yield conf
    for name in WORKERS:
        node = nodes.nodes[name]
        asyncio.run(_unpin(node.agent))
        (node.crio.registries_conf_dir / "50-site.conf").unlink(missing_ok=True)
        node.crio.reload()
        ids = [i["id"] for i in node.crio.images_json().get("images") or []]
        if ids:
            node.crio.crictl("rmi", *ids)


async def _unpin(agent) -> None:
    async with agent.client() as client:
        await client.apply([])


def pool_conditions(kube) -> dict[str, dict]:
    return {c["type"]: c for c in (kube.get("machineconfigpool", "worker").get("status") or {}).get("conditions") or []}


def window(start: datetime, seconds: float) -> str:
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return f"start={start.strftime(stamp)}; end={(start + timedelta(seconds=seconds)).strftime(stamp)}"


def pinned(nodes, refs) -> bool:
    return all(set(refs) <= nodes.nodes[n].crio.pinned_images() for n in WORKERS)


def metric(http: str, name: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    return float(re.search(rf'^{name}\{{pool="worker"\}} (\S+)$', text, re.M)[1])


def test_the_warm_pauses_at_the_windows_end_and_a_new_leader_resumes_it_at_the_next(kube, nodes, controllers, site,
                                                                                    site_nodes):
    far = datetime.now(timezone.utc) + timedelta(days=1)
    pool = cluster.pool("worker", max_unavailable=3)
    pool["metadata"]["annotations"] = {"pinsvc.io/window": window(far, 3600)}
    kube.apply(node_objects(nodes, WORKERS) + [pool, cluster.pinned_image_set("site-images", site.refs, role="worker")])
    args = ("--warm-registries-conf", str(site_nodes), "--warm-rate", "2MiB")
    first = controllers("controller-a", *args)
    closed = wait_for("the pool waiting for its window", lambda: pool_conditions(kube).get("PinnedImageSetsWarmed"))
    assert closed["reason"] == "WindowClosed" and far.strftime("%Y-%m-%dT%H:%M:%SZ") in closed["message"], closed
    assert not site.blob_transfers(), "nothing fetched before the window"

    # a window of 3 s: part of the warm (about 4.5 s at 2 MiB/s), then a pause
    opened = datetime.now(timezone.utc)
    kube.kubectl("annotate", "machineconfigpool", "worker", "--overwrite", f"pinsvc.io/window={window(opened, 3)}")
    paused = wait_for("the warm paused at the window's end", lambda: (c := pool_conditions(kube).get(
        "PinnedImageSetsWarmed")) and c["reason"] == "WindowClosed" and "Paused: " in c["message"] and c)
    assert "does not open again" in paused["message"] and not pinned(nodes, site.refs), paused
    ends = opened.replace(microsecond=0) + timedelta(seconds=3)
    offset = time.time() - time.monotonic()
    starts = [datetime.fromtimestamp(r.started + offset, timezone.utc)
              for r in site.proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    assert starts and max(starts) <= ends + timedelta(seconds=0.1), "no upstream transfer starts after the end"
    done_before = len(site.blob_transfers())

    # the leader dies while paused; its successor resumes at the next window
    first.kill()
    second = controllers("controller-b", *args)
    kube.kubectl("annotate", "machineconfigpool", "worker", "--overwrite",
                 f"pinsvc.io/window={window(datetime.now(timezone.utc), 3600)}")
    wait_for("every worker pinned", lambda: pinned(nodes, site.refs), timeout=90)
    warmed = pool_conditions(kube)["PinnedImageSetsWarmed"]
    assert warmed["status"] == "True" and warmed["message"].startswith("Warmed: 9.0 of 9.0 MiB"), warmed
    assert re.search(r"\[content [0-9a-f]{12}\]$", warmed["message"])
    sizes = {b.digest: b.size for i in site.workload for b in (i.config, *i.layers)}
    for digest, copies in site.blob_transfers().items():
        if sizes[digest] > PROBE_COPY:  # the new leader found what the first one warmed in the cache
            assert copies.count(sizes[digest]) == 1 and sum(copies) - sizes[digest] <= PROBE_COPY, (digest, copies)
    assert 0 < done_before < len(sizes)
    assert metric(second.http, "pinsvc_warm_bytes_done") == metric(second.http, "pinsvc_warm_bytes") == sum(sizes.values())


def test_a_cache_that_is_down_is_named_the_pool_waits_and_recovers_when_it_is_back(kube, nodes, controllers, site,
                                                                                  site_nodes):
    kube.apply(node_objects(nodes, WORKERS) + [cluster.pool("worker", max_unavailable=3)])
    site.cache.stop()
    try:
        kube.apply([cluster.pinned_image_set("site-images", site.refs, role="worker")])
        controllers("controller-a", "--warm-registries-conf", str(site_nodes), "--warm-rate", "2MiB")
        failed = wait_for("the warm's reason on the pool", lambda: (c := pool_conditions(kube).get(
            "PinnedImageSetsWarmed")) and c["reason"] == "CacheUnavailable" and c)
        assert f"cache {site.cache.host}: " in failed["message"] and "cannot connect" in failed["message"], failed
        degraded = wait_for("the pool degraded", lambda: (c := pool_conditions(kube).get("PinnedImageSetsDegraded"))
                            and c["status"] == "True" and c)
        assert f"warm stage: cache {site.cache.host}" in degraded["message"], degraded
        for name in WORKERS:
            assert nodes.nodes[name].crio.images_json().get("images", []) == [], "no node started"
    finally:
        site.cache.start()
    wait_for("every worker pinned once the cache is back", lambda: pinned(nodes, site.refs), timeout=90)
    assert pool_conditions(kube)["PinnedImageSetsDegraded"]["status"] == "False"
