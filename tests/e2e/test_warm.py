"""The warm stage with pinctl on real peers (issue 15): an upstream registry behind a slow
link (a fault proxy with a shared rate cap and byte counter), Debian's docker-registry in
proxy mode as the site cache, and 3 real CRI-O nodes whose registries.conf reaches the
canonical name (`upstream.example.invalid`, unresolvable and blocked) only through the cache.

Witnesses: crictl on every node (pinned), the link's request log (each blob crossed once,
the rate over the warm, nothing outside a window), pinctl's output (reasons, conditions).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from devenv import cluster as objects
from devenv.site import Site, release_workload, unique_bytes
from tests.e2e.cluster import Cluster, items, node_condition, synchronizer
from tests.e2e.conftest import clean_node

MiB = 1 << 20
CAP = 4 * MiB  # the link
BUDGET = 2 * MiB  # the warm's --warm-rate: the link shared with other traffic
PROBE_COPY = 160 * 1024  # the most of a second copy a probe lets through before it closes


@pytest.fixture(scope="module")
def site(peers_root):
    with Site(peers_root / "site", rate=CAP) as s:
        s.workload = release_workload(3)
        s.refs = s.push(s.workload)
        yield s


@pytest.fixture
def warm_cluster(tmp_path, crios, registry, site):
    """The 3 nodes, each mirroring the canonical name through the (empty) cache, an agent
    each, the cluster file with one set of the site's images for every node."""
    site.cache.wipe()
    site.proxy.reset_counters()
    site.link.reset()
    conf = tmp_path / "registries.conf"
    conf.write_text(site.registries_conf())
    for crio in crios.values():
        clean_node(crio)
        (crio.registries_conf_dir / "50-site.conf").write_text(site.registries_conf())
        crio.reload()
    c = Cluster(tmp_path, crios, registry, {})
    c.warm_conf = conf
    for name in c.nodes:
        c.start_agent(name)
    c.write(site.refs)
    yield c
    c.stop()
    for crio in crios.values():
        (crio.registries_conf_dir / "50-site.conf").unlink(missing_ok=True)
        crio.reload()


def pinctl_warm(c: Cluster, *args: str, timeout: float = 240):
    return c.pinctl("rollout", "--warm-registries-conf", str(c.warm_conf), "--warm-rate", str(BUDGET),
                    *args, timeout=timeout)


def pinned_everywhere(c: Cluster, refs) -> bool:
    return all(set(refs) <= crio.pinned_images() for crio in c.crios.values())


def blob_gets(site: Site):
    return [r for r in site.proxy.requests if r.method == "GET" and "/blobs/" in r.path]


def test_warm_then_rollout_pins_everything_with_each_blob_crossing_the_link_once_at_the_budget(warm_cluster, site):
    c = warm_cluster
    code, doc, err = pinctl_warm(c)
    assert code == 0, err
    assert pinned_everywhere(c, site.refs), {n: crio.pinned_images() for n, crio in c.crios.items()}

    # each blob: one full copy over the link (the cache's), and at most the probe's cut-off copy
    sizes = {b.digest: b.size for i in site.workload for b in (i.config, *i.layers)}
    transfers = site.blob_transfers()
    assert set(transfers) == set(sizes), "every blob of the set, nothing else"
    for digest, copies in transfers.items():
        if sizes[digest] > PROBE_COPY:
            assert copies.count(sizes[digest]) == 1 and sum(copies) - sizes[digest] <= PROBE_COPY, (digest, copies)
        else:  # a config: the probe's copy is whole before it can be cut off
            assert sum(copies) <= 3 * sizes[digest], (digest, copies)
    assert site.link.bytes <= 1.05 * unique_bytes(site.workload) + 64 * 1024, (site.link.bytes, unique_bytes(site.workload))

    # the rate over the warm: within 10 % of the budget. The pacer spaces the starts of the
    # cache's fetches by size / budget, and the last one then runs at the link's speed (twice
    # the budget here): so the rate is every byte that crossed between the first layer's fetch
    # and the last one's start, over that time (first to last byte would count the last
    # layer at the link's speed, 15 % over the budget for this 9 MiB set)
    gets = blob_gets(site)
    fetches = sorted((r for r in gets if r.body_bytes == sizes[r.path.rsplit("/", 1)[1]] > PROBE_COPY),
                     key=lambda r: r.started)
    first, last = fetches[0].started, fetches[-1].started
    rate = sum(r.body_bytes for r in gets if first <= r.started < last) / (last - first)
    assert abs(rate - BUDGET) <= 0.1 * BUDGET, f"{rate / MiB:.2f} MiB/s over {last - first:.1f} s, budget {BUDGET / MiB:g}"

    worker = items(doc, "MachineConfigPool")["worker"]
    warmed = next(x for x in worker["status"]["conditions"] if x["type"] == "PinnedImageSetsWarmed")
    assert warmed["status"] == "True" and warmed["message"].startswith(f"Warmed: ") and site.cache.host in warmed["message"]
    assert synchronizer(worker)["updatedMachineCount"] == 2

    # a rerun changes nothing and moves no byte over the link
    before = site.link.bytes
    code, _, err = pinctl_warm(c)
    assert code == 0, err
    assert site.link.bytes == before


def test_a_window_closing_mid_warm_pauses_and_the_next_opening_resumes(warm_cluster, site):
    c = warm_cluster
    # open 3 s of every 6: the warm (about 4.5 s at the budget) needs several openings
    window = "cron=* * * * * */6; duration=3s"
    offset = time.time() - time.monotonic()
    code, doc, err = pinctl_warm(c, "--window", window)
    assert code == 0, err
    assert pinned_everywhere(c, site.refs)
    assert "window closed, opens" in err, err
    # every upstream transfer started inside an opening (second 0-3 of each 6)
    starts = [datetime.fromtimestamp(r.started + offset, timezone.utc) for r in blob_gets(site)]
    outside = [s for s in starts if s.second % 6 >= 3]
    assert not outside, [s.isoformat() for s in outside]
    openings = {s.replace(second=s.second - s.second % 6, microsecond=0) for s in starts}
    assert len(openings) >= 2, "the warm paused at a window's end and resumed at the next"
    for digest, copies in site.blob_transfers().items():
        assert sum(copies) <= max(copies) + PROBE_COPY, (digest, copies)


def test_the_cache_down_gives_a_clear_reason_and_pins_nothing_then_a_rerun_completes(warm_cluster, site):
    c = warm_cluster
    site.cache.stop()
    try:
        code, doc, err = pinctl_warm(c)
    finally:
        site.cache.start()
    assert code == 1
    for name in c.nodes:
        degraded = node_condition(items(doc, "MachineConfigNode")[name])
        assert degraded["status"] == "True" and degraded["reason"] == "CacheUnavailable", degraded
        assert f"cache {site.cache.host}: " in degraded["message"] and "cannot connect" in degraded["message"]
    assert f"pool worker: warm stage: cache {site.cache.host}" in err
    for crio in c.crios.values():
        assert crio.images_json().get("images", []) == [], "no node started: nothing pulled, nothing pinned"
    code, _, err = pinctl_warm(c)
    assert code == 0, err
    assert pinned_everywhere(c, site.refs)

