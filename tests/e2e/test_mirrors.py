"""A disconnected cluster (issue 12): images referenced by their canonical names
(`quay.io/openshift-release-dev/...`, a host this machine cannot even resolve) and pulled
from mirror registries that a registries.conf.d drop-in names, as OpenShift writes an
ImageDigestMirrorSet. Real CRI-O, real registries, crictl and CRI-O's own log as witnesses:
sized, pulled and pinned through the mirror under the canonical names; a mirror chain; a
blocked source; a mirror with its own credentials (its access log); an unrelated registry
that never answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pinsvc_client import NotFound, SetSpec
from devenv import cluster as objects
from devenv import images as fixture_images
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.faultproxy import FaultProxy
from devenv.registry import Registry
from tests.e2e.conftest import apply, clean_node
from tests.e2e.helpers import Kind, Stage, final_status, free_port, set_status

CANONICAL = "quay.io/openshift-release-dev"
REPO = "openshift-release-dev/ocp-release"
TRYING = re.compile(r'Trying to access \\"([^"\\]+)\\"')
MIRROR_USER, MIRROR_PASSWORD = "mirror-puller", "M1rror-only-Pa55"
QUAY_USER, QUAY_PASSWORD = "quay-puller", "Qu4y-never-to-a-mirror"


def release_images(seed: str) -> list[fixture_images.Image]:
    """Two 'release' images sharing a base layer, as ocp-release payloads do."""
    base = fixture_images.make_layer(f"{seed}/base", 256 << 10)
    return [fixture_images.build_image(REPO, [base, fixture_images.make_layer(f"{seed}/{n}", 128 << 10)])
            for n in ("a", "b")]


def canonical(image: fixture_images.Image) -> str:
    return f"quay.io/{image.repo}@{image.digest}"


@pytest.fixture(scope="module")
def mirror(peers_root):
    """The mirror registry (plain HTTP), holding the release images under the source's path."""
    reg = Registry(peers_root / "mirror", access_log=True)
    reg.start()
    reg.release = [canonical(i) for i in release_images("mirror")]
    asyncio.run(fixture_images.push_many(reg.host, release_images("mirror")))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def private_mirror(peers_root):
    """A mirror that wants its own user (htpasswd), its access log on."""
    reg = Registry(peers_root / "private-mirror", htpasswd={MIRROR_USER: MIRROR_PASSWORD}, access_log=True)
    reg.start()
    reg.release = [canonical(i) for i in release_images("private")]
    asyncio.run(fixture_images.push_many(reg.host, release_images("private"), auth=(MIRROR_USER, MIRROR_PASSWORD)))
    yield reg
    reg.stop()


def mirror_source(crio: Crio, *mirrors: str, blocked: bool = False) -> Path:
    """The drop-in an ImageDigestMirrorSet for CANONICAL becomes (blocked: mirrorSourcePolicy
    NeverContactSource); CRI-O reloaded."""
    text = f'[[registry]]\nprefix = "{CANONICAL}"\nlocation = "{CANONICAL}"\nblocked = {str(blocked).lower()}\n'
    text += "".join(f'[[registry.mirror]]\nlocation = "{m}"\ninsecure = true\npull-from-mirror = "digest-only"\n'
                    for m in mirrors)
    path = crio.registries_conf_dir / "99-ocp-release-idms.conf"
    path.write_text(text)
    crio.reload()
    return path


def tried(crio: Crio, offset: int) -> list[str]:
    """The endpoints CRI-O tried ("Trying to access ...") since byte `offset` of its log."""
    with open(crio.log_path, "rb") as f:
        f.seek(offset)
        return TRYING.findall(f.read().decode(errors="replace"))


def canonical_pins(crio: Crio) -> dict[str, bool]:
    """repo digest -> pinned, for the images CRI-O has under the canonical registry."""
    return {d: i["pinned"] for i in crio.images_json()["images"] for d in i["repoDigests"] if d.startswith(CANONICAL)}


# ---- the documented PinnedImageSet through pinctl --------------------------------------------

@pytest.fixture(scope="module")
def mirrored_nodes(peers_root, registry):
    nodes = {}
    try:
        for name in ("m1", "m2"):
            nodes[name] = Crio(peers_root / f"crio-{name}", registries=[registry.host])
            nodes[name].start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def pinctl(*argv: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", *argv, "-o", "json"],
                          capture_output=True, text=True, timeout=240)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_the_documented_set_is_sized_pulled_and_pinned_through_the_mirror(tmp_path, mirrored_nodes, registry,
                                                                          mirror):
    agents, endpoints = [], {}
    for name, crio in mirrored_nodes.items():
        clean_node(crio)
        mirror_source(crio, f"{mirror.host}/openshift-release-dev")
        agents.append(AgentProcess(tmp_path / name, crio, registry, **{"node-name": name}))
        agents[-1].start()
        endpoints[name] = agents[-1].endpoint
    try:
        cluster, endpoint_map = tmp_path / "cluster.yaml", tmp_path / "endpoints.yaml"
        endpoint_map.write_text(yaml.safe_dump(endpoints))
        cluster.write_text(objects.render([
            objects.pinned_image_set("worker-pinned-images", mirror.release, role="worker"),
            objects.pool("worker"), *(objects.node(name) for name in mirrored_nodes)]))
        common = ["-f", str(cluster), "--endpoints", str(endpoint_map)]

        code, plan, err = pinctl("plan", *common)
        assert code == 0, err
        reasons = [n["reason"] for pool in plan["pools"] for n in pool["nodes"]]
        assert len(reasons) == 2 and all(
            r.endswith(f"; sized via {mirror.host}/{REPO} (2 images)") for r in reasons), reasons

        offsets = {name: crio.log_path.stat().st_size for name, crio in mirrored_nodes.items()}
        code, doc, err = pinctl("rollout", *common, "--record-dir", str(tmp_path / "records"))
        assert code == 0, err
        for name, crio in mirrored_nodes.items():
            assert canonical_pins(crio) == dict.fromkeys(mirror.release, True), "pinned under the canonical names"
            assert set(tried(crio, offsets[name])) == {f"{mirror.host}/{REPO}@{r.split('@')[1]}"
                                                       for r in mirror.release}, "pulled from the mirror only"
    finally:
        for agent in agents:
            agent.stop()


# ---- one node, through the agent's API ---------------------------------------------------------

async def test_when_the_first_mirror_is_down_the_second_serves(node, agent_factory, mirror):
    mirror_source(node, f"127.0.0.1:{free_port()}/openshift-release-dev", f"{mirror.host}/openshift-release-dev",
                  blocked=True)
    image = mirror.release[0]
    events, error = await apply(agent_factory(), SetSpec("release", 1, (image,)))
    assert error is None, error
    [pulled] = [e.image for e in events if e.WhichOneof("event") == "image" and e.image.kind == Kind.PULLED]
    assert pulled.via == f"{mirror.host}/{REPO}"
    [space] = [e.stage for e in events if e.WhichOneof("event") == "stage" and e.stage.stage == Stage.SPACE_CHECKED]
    assert [p.via for p in space.space.images] == [f"{mirror.host}/{REPO}"]
    assert space.message.endswith(f"; sized via {mirror.host}/{REPO} (1 image)")
    assert canonical_pins(node) == {image: True}


async def test_a_blocked_source_whose_mirror_lacks_the_image_is_one_error_naming_both(node, agent_factory, mirror):
    conf = mirror_source(node, f"{mirror.host}/openshift-release-dev", blocked=True)
    missing, good = f"{CANONICAL}/ocp-release@sha256:{'ab' * 32}", mirror.release[1]
    expected = (f"image {missing}: none of its 2 endpoints (registries.conf, in the runtime's order) served it: "
                f"{mirror.host}/{REPO}: manifest unknown on {mirror.host}; "
                f"{CANONICAL}/ocp-release: not contacted: blocked by [[registry]] '{CANONICAL}' in {conf}")
    agent = agent_factory()
    offset = node.log_path.stat().st_size
    started = time.monotonic()
    async with agent.client() as client:
        with pytest.raises(NotFound) as raised:
            await client.check_space([missing, good])
    assert (raised.value.details(), raised.value.reason) == (expected, "NOT_FOUND")

    events, error = await apply(agent, SetSpec("broken", 1, (missing,)), SetSpec("release", 1, (good,)))
    assert time.monotonic() - started < 15
    assert error is not None and error.details() == expected
    status = final_status(events)
    assert set_status(status, "broken").last_failed_generation_error == expected
    assert set_status(status, "release").current_generation == 1
    assert canonical_pins(node) == {good: True}
    assert not [t for t in tried(node, offset) if t.endswith("ab" * 32)], "CRI-O was never asked to pull it"


async def test_a_mirror_with_its_own_credentials_never_gets_the_canonical_ones(node, agent_factory, private_mirror):
    """The pull secret (also CRI-O's global_auth_file, as the kubelet's config.json on a node)
    holds credentials for the canonical repository and for the mirror. The agent's manifest
    requests and CRI-O's pulls both reach the mirror with the mirror's user only."""
    def auth(user: str, password: str) -> dict:
        return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}

    node.auth_file.write_text(json.dumps({"auths": {CANONICAL: auth(QUAY_USER, QUAY_PASSWORD),
                                                    private_mirror.host: auth(MIRROR_USER, MIRROR_PASSWORD)}}))
    mirror_source(node, f"{private_mirror.host}/openshift-release-dev", blocked=True)
    offset = private_mirror.log_path.stat().st_size
    events, error = await apply(agent_factory(), SetSpec("release", 1, tuple(private_mirror.release)))
    assert error is None, error
    assert canonical_pins(node) == dict.fromkeys(private_mirror.release, True)
    log = private_mirror.log_path.read_text(errors="replace")[offset:]
    authorized = [line for line in log.splitlines() if 'msg="authorized request"' in line]
    assert [line for line in authorized if "aiohttp" in line], "the agent sized through the mirror"
    assert [line for line in authorized if "cri-o" in line], "CRI-O pulled from the mirror"
    assert QUAY_USER not in log and "authentication failure" not in log, "no canonical credentials were tried"


# ---- an unrelated registry that never answers ----------------------------------------------------

async def test_a_silent_registry_of_an_unrelated_present_image_does_not_slow_an_apply(node, agent_factory, registry,
                                                                                      workload):
    """An image already on the node came from a registry that now accepts connections and
    never answers (the fault proxy holds every request). The Apply of other images neither
    asks it anything nor takes longer than with that registry healthy."""
    wanted = (workload["app-a"], workload["oci"], workload["three-layers"])
    with FaultProxy(registry.host) as proxy:
        (node.registries_conf_dir / "50-unrelated.conf").write_text(
            f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
        node.reload()
        unrelated = proxy.ref(workload["app-b"])
        node.crictl("pull", unrelated, timeout=60)

        async def timed(silent: bool) -> float:
            for entry in node.dropin_dir.iterdir():
                entry.unlink()
            node.reload()
            present = {d for i in node.images_json()["images"] for d in i["repoDigests"]}
            if gone := [w for w in wanted if w in present]:
                node.crictl("rmi", *gone)
            if silent:
                proxy.set_fault("stall", seconds=600)
            proxy.reset_counters()
            agent = agent_factory()  # a fresh agent: it never sized the unrelated image
            started = time.monotonic()
            events, error = await asyncio.wait_for(apply(agent, SetSpec("apps", 1, wanted)), 60)
            elapsed = time.monotonic() - started
            assert error is None, error
            assert proxy.count() == 0, "the unrelated image's registry is never asked"
            agent.stop()
            return elapsed

        healthy = [await timed(silent=False) for _ in range(2)]
        silent = [await timed(silent=True) for _ in range(2)]
    print(f"\nApply of 3 images, unrelated present image's registry healthy: "
          f"{', '.join(f'{t:.2f}' for t in healthy)} s; silent: {', '.join(f'{t:.2f}' for t in silent)} s")
    assert min(silent) < min(healthy) + 1.0


async def test_by_default_the_agent_reads_the_files_of_the_crio_serving_its_socket(node, agent_factory, mirror):
    """No registries setting: the agent finds the CRI-O holding its CRI socket (several run
    on this machine) and reads the files its --registries-conf(-dir) flags name."""
    mirror_source(node, f"{mirror.host}/openshift-release-dev", blocked=True)
    agent = agent_factory(**{"registry-registries-conf": "", "registry-registries-conf-dirs": "",
                             "reload-pidfile": ""})
    assert (f"registries configuration: {node.registries_conf} + {node.registries_conf_dir}; certs.d "
            in agent.log()), agent.log()
    assert f"with socket {node.socket} open" in agent.log()
    events, error = await apply(agent, SetSpec("release", 1, (mirror.release[0],)))
    assert error is None, error
    assert canonical_pins(node) == {mirror.release[0]: True}


async def test_a_silent_mirror_is_bounded_by_the_space_check_deadline(node, agent_factory, mirror):
    """The only mirror accepts connections and never answers: CheckSpace answers at the
    deadline with a registry error naming it, and the agent stays available."""
    with FaultProxy(mirror.host) as proxy:
        proxy.set_fault("stall", seconds=600)
        mirror_source(node, f"{proxy.host}/openshift-release-dev", blocked=True)
        agent = agent_factory(**{"space-deadline-seconds": "2", "registry-timeout-seconds": "30"})
        image = mirror.release[0]
        started = time.monotonic()
        async with agent.client() as client:
            with pytest.raises(Exception) as raised:
                await client.check_space([image])
            assert 2 <= time.monotonic() - started < 6
            assert raised.value.details() == (
                f"image {image}: no registry served its manifest in the 2 s the space check's deadline left "
                f"({proxy.host}/{REPO}: no answer yet)")
            assert (raised.value.code().name, raised.value.reason) == ("UNAVAILABLE", "REGISTRY")
            assert not raised.value.retryable, "the agent answered: not to be retried as if it were down"
            assert (await client.status()).node, "the agent still answers"
