"""`pinctl` tells the truth (issue 13), against real agents, each with its real CRI-O:
an edited PinnedImageSet file reaches the nodes, the status roll-up compares what each
node's agent holds with what the cluster wants, failures come back with their own reason
(only an unreachable agent is retried), and the CLI behaves as oc/kubectl users expect.
Every pin is checked with crictl."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from pinsvc_client import SetSpec
from devenv import cluster as objects
from devenv import images as fixture_images
from devenv.crio import Crio
from devenv.faultproxy import FaultProxy
from tests.e2e.cluster import Cluster, items, node_condition, synchronizer
from tests.e2e.conftest import AUTH_PASSWORD, AUTH_USER, clean_node


def pinctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def worker_set(doc, node: str) -> dict:
    sets = items(doc, "MachineConfigNode")[node]["status"]["pinnedImageSets"]
    return next(s for s in sets if s["name"] == "worker-set")


# ---- 1. an edited file is applied ------------------------------------------------------------

def test_an_edited_file_without_generations_is_rolled_out(cluster):
    """The documented YAML has no metadata.generation: an edit of the images is a new
    generation all the same (the agent's desired generation + 1), and the same content
    rolled out again is not applied again."""
    w = cluster.workload
    cluster.write(["app-a", "oci"], ["three-layers"], worker_generation=None, infra_generation=None)
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert worker_set(doc, "n1")["currentGeneration"] == 1

    cluster.write(["app-b", "oci"], ["three-layers"], worker_generation=None, infra_generation=None)
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert "already at the desired" not in err
    for name in cluster.nodes:
        pinned = cluster.crios[name].pinned_images()
        assert w["app-b"] in pinned and w["app-a"] not in pinned, name
        assert worker_set(doc, name)["desiredGeneration"] == worker_set(doc, name)["currentGeneration"] == 2
    infra = {s["name"]: s for s in items(doc, "MachineConfigNode")["n3"]["status"]["pinnedImageSets"]}["infra-set"]
    assert infra["currentGeneration"] == 1, "an unchanged set keeps its generation"

    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert err.count("already at the desired content") == 3
    assert worker_set(doc, "n1")["currentGeneration"] == 2, "the same content is the same generation"


def test_content_changed_under_the_same_generation_is_rolled_out(cluster):
    """An `oc get -o yaml` dump edited by hand keeps its metadata.generation: the rollout
    compares the images, not the numbers, and never reports success for content the nodes
    do not have."""
    w = cluster.workload
    assert cluster.pinctl("rollout")[0] == 0
    cluster.write(["app-b", "oci"], ["three-layers"])  # generation 1 still
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert "already at the desired" not in err
    for name in cluster.nodes:
        pinned = cluster.crios[name].pinned_images()
        assert w["app-b"] in pinned and w["app-a"] not in pinned, name


def test_node_apply_of_an_edited_file_is_applied(cluster):
    agent, sets = cluster.agents["n1"], cluster.workdir / "sets.yaml"
    w = cluster.workload
    for image in ("oci", "app-b"):
        sets.write_text(objects.render([objects.pinned_image_set("direct", [w[image]], generation=None)]))
        proc = pinctl("node", "apply", "--endpoint", agent.endpoint, "-f", str(sets), "-o", "json")
        assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"]["pinnedImageSets"] == [
        {"name": "direct", "desiredGeneration": 2, "currentGeneration": 2}]
    pinned = cluster.crios["n1"].pinned_images()
    assert w["app-b"] in pinned and w["oci"] not in pinned


# ---- 2. an honest roll-up --------------------------------------------------------------------

def test_status_names_the_sets_a_node_misses_and_fails(cluster):
    """Agents that hold only `set-a` while the cluster wants worker-set (and infra-set):
    not "All nodes are pinned"."""
    async def pin_set_a(agent):
        async with agent.client() as client:
            await client.apply([SetSpec("set-a", 1, (cluster.workload["oci"],))])

    for agent in cluster.agents.values():
        asyncio.run(pin_set_a(agent))
    code, doc, err = cluster.pinctl("status")
    assert code == 1, err
    pools = items(doc, "MachineConfigPool")
    assert synchronizer(pools["worker"])["updatedMachineCount"] == 0
    messages = " ".join(c["message"] for p in pools.values() for c in p["status"]["conditions"])
    assert "All nodes are pinned" not in messages
    for name in cluster.nodes:
        assert re.search(rf"{name}: (?:(?!n\d: ).)*worker-set: missing", messages), messages
        assert re.search(rf"{name}: (?:(?!n\d: ).)*set-a: pinned but not wanted", messages), messages
    assert "worker-set" in err and "n1" in err, "the exit message says why"


def test_status_finds_a_stale_set_and_then_all_pinned(cluster):
    assert cluster.pinctl("rollout")[0] == 0
    code, doc, err = cluster.pinctl("status")
    assert code == 0, err
    assert all(synchronizer(p)["updatedMachineCount"] == synchronizer(p)["machineCount"]
               for p in items(doc, "MachineConfigPool").values())

    cluster.write(["app-b", "oci"], ["three-layers"])  # same generation, other images
    code, doc, err = cluster.pinctl("status")
    assert code == 1, err
    worker = items(doc, "MachineConfigPool")["worker"]
    assert synchronizer(worker)["updatedMachineCount"] == 0
    message = " ".join(c["message"] for c in worker["status"]["conditions"])
    for name in ("n1", "n2"):
        assert re.search(rf"{name}: (?:(?!n\d: ).)*worker-set: stale", message), message


# ---- 3. distinct reasons -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_image(auth_registry) -> str:
    image = fixture_images.build_image("team/pinctl-private", [fixture_images.make_layer("pinctl-private", 32 << 10)])
    (ref,) = asyncio.run(fixture_images.push_many(auth_registry.host, [image], auth=(AUTH_USER, AUTH_PASSWORD)))
    return ref


def test_each_failure_has_its_own_reason_and_only_an_unreachable_agent_is_retried(
        cluster, registry, auth_registry, private_image):
    missing = fixture_images.missing_ref(registry.host)
    cluster.start_agent("n3", **{"registry-insecure": f"{registry.host},{auth_registry.host}"})
    cluster.agents["n1"].kill()
    cluster.start_agent("n2", **{"space-min-free-bytes": str(1 << 60)})
    cluster.write(["app-a"], [missing])
    code, doc, err = cluster.pinctl("rollout", "--abort-after", "0", "--retries", "2",
                                    "--retry-backoff-initial-seconds", "0.1")
    assert code == 1
    nodes = items(doc, "MachineConfigNode")
    reasons = {n: node_condition(nodes[n])["reason"] for n in cluster.nodes}
    assert reasons == {"n1": "AgentUnavailable", "n2": "InsufficientSpace", "n3": "ImageNotFound"}, reasons
    retried = re.findall(r"node (\w+): agent at .* attempt 1/2 failed.*retrying", err)
    assert retried and set(retried) == {"n1"}, err
    assert missing in node_condition(nodes["n3"])["message"]
    assert cluster.workload["app-a"] in cluster.crios["n3"].pinned_images(), "n3 pins what it can"

    cluster.write(["app-a"], [private_image])  # no pull secret for the private registry
    code, doc, err = cluster.pinctl("rollout", "--abort-after", "0", "--retries", "1")
    assert code == 1
    assert node_condition(items(doc, "MachineConfigNode")["n3"])["reason"] == "Unauthorized", err


@pytest.fixture(scope="module")
def stalled(peers_root, registry, workload):
    """A node whose registry accepts connections and never answers (the fault proxy holds
    every request), with an agent that gives up on a manifest after 2 x 2 s."""
    proxy = FaultProxy(registry.host)
    proxy.start()
    crio = Crio(peers_root / "crio-stalled", registries=[proxy.host])
    crio.start()
    try:
        yield proxy, crio, {name: proxy.ref(ref) for name, ref in workload.items()}
    finally:
        crio.stop()
        proxy.stop()


REGISTRY_BUDGET = 2 * 2 + 0.5
"""Seconds the stalled node's agent spends on a manifest: 2 attempts of 2 s, 0.5 s apart."""


def test_a_registry_that_never_answers_is_a_registry_failure_not_retried_and_bounded(tmp_path, stalled, registry):
    proxy, crio, refs = stalled
    clean_node(crio)
    c = Cluster(tmp_path, {"s1": crio}, proxy, refs, nodes={"s1": "worker"})
    c.start_agent("s1", **{"registry-timeout-seconds": "2", "registry-max-attempts": "2",
                           "registry-backoff-initial-seconds": "0.5"})
    try:
        c.write(["app-a"])
        proxy.set_fault("stall", seconds=3600)
        start = time.monotonic()
        code, doc, err = c.pinctl("rollout", "--retries", "3", "--retry-backoff-initial-seconds", "0.1")
        elapsed = time.monotonic() - start
    finally:
        proxy.clear_faults()
        c.stop()
    assert code == 1
    condition = node_condition(items(doc, "MachineConfigNode")["s1"])
    assert condition["reason"] == "RegistryUnavailable", condition
    assert "timed out" in condition["message"] and proxy.host in condition["message"]
    assert "retrying" not in err, "the agent answered: it is not retried"
    assert "RegistryUnavailable" in err
    assert elapsed < 2 * REGISTRY_BUDGET + 10, f"{elapsed:.1f} s"


# ---- 4. CLI habits ---------------------------------------------------------------------------------

def test_check_space_exits_1_and_prints_fits_when_the_images_do_not_fit(cluster):
    agent = cluster.start_agent("n1", **{"space-min-free-bytes": str(1 << 60)})
    proc = pinctl("node", "check-space", "--endpoint", agent.endpoint, "-o", "json", cluster.workload["oci"])
    assert proc.returncode == 1
    plan = json.loads(proc.stdout)
    assert plan["fits"] is False and isinstance(plan["requiredBytes"], int)
    assert "do not fit" in proc.stderr and "insufficient space" in proc.stderr

    agent = cluster.start_agent("n1")
    proc = pinctl("node", "check-space", "--endpoint", agent.endpoint, "-o", "yaml", cluster.workload["oci"])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["fits"] is True


def test_generations_are_integers_in_json(cluster):
    assert cluster.pinctl("rollout")[0] == 0
    agent = cluster.agents["n1"]
    for argv in (["-m", "pinsvc.coordinator.cli", "node", "status", "--endpoint", agent.endpoint, "-o", "json"],
                 ["-m", "pinsvc", "status", "--endpoint", agent.endpoint, "-o", "json"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        entry = (doc.get("status") or doc)["pinnedImageSets"][0]
        assert entry["desiredGeneration"] == 1 and entry["currentGeneration"] == 1, entry


def test_a_failure_names_the_reference_once(cluster, registry):
    missing = fixture_images.missing_ref(registry.host)
    proc = pinctl("node", "check-space", "--endpoint", cluster.agents["n1"].endpoint, missing)
    assert proc.returncode == 1
    assert proc.stderr.count(missing) == 1, proc.stderr
    cluster.write(["app-a", missing])
    code, doc, err = cluster.pinctl("rollout", "--abort-after", "0")
    assert code == 1
    entry = worker_set(doc, "n1")
    assert entry["lastFailedGenerationError"].count(missing) == 1, entry
    assert node_condition(items(doc, "MachineConfigNode")["n1"])["message"].count(missing) == 1
