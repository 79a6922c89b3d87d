"""One set of real peers per test session: a distribution registry with the small test
workload, one CRI-O (overlay storage, all state in a temp dir) and crictl. Each test gets a
clean node (no drop-in, no images) and its own agent process, `pinsvc agent`, started like
an operator would start it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from pinsvc_client import SetSpec
from devenv import images as fixture_images
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.paths import bin_path
from devenv.registry import Registry

REASON = None
if os.geteuid() != 0:
    REASON = "the e2e tests run CRI-O and need root"
else:
    try:
        bin_path("crio"), bin_path("crictl")
    except FileNotFoundError as e:
        REASON = f"{e} (run bash scripts/install-peers.sh)"

if REASON and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the e2e tier: {REASON}")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if REASON:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def peers_root():
    root = Path(tempfile.mkdtemp(prefix="pinsvc-e2e-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry(peers_root):
    reg = Registry(peers_root / "registry")
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def workload(registry) -> dict[str, str]:
    """name -> digest reference of the small workload, pushed once."""
    items = fixture_images.small_workload()
    refs = asyncio.run(fixture_images.push_many(registry.host, list(items.values())))
    return dict(zip(items, refs))


AUTH_USER, AUTH_PASSWORD = "puller", "s3cret-Pa55-do-not-leak"


@pytest.fixture(scope="session")
def auth_registry(peers_root):
    """A registry that requires basic auth (htpasswd)."""
    reg = Registry(peers_root / "auth-registry", htpasswd={AUTH_USER: AUTH_PASSWORD})
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def jaeger(peers_root):
    """A real Jaeger (OTLP/gRPC in, query API out, in memory, loopback only)."""
    from devenv.jaeger import Jaeger
    with Jaeger(peers_root / "jaeger") as j:
        yield j


@pytest.fixture(scope="session")
def crio(peers_root, registry, auth_registry):
    node = Crio(peers_root / "crio", registries=[registry.host, auth_registry.host])
    node.start()
    yield node
    node.stop()


def clean_node(crio: Crio) -> None:
    """No drop-in (crio.conf.d, registries.conf.d), no global auth file, no images,
    configuration reloaded."""
    for entry in [*crio.dropin_dir.iterdir(), *crio.registries_conf_dir.iterdir()]:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    crio.auth_file.unlink(missing_ok=True)
    crio.reload()
    listing = crio.images_json().get("images", [])
    ids = [i["id"] for i in listing]
    if ids:
        crio.crictl("rmi", *ids)


@pytest.fixture
def node(crio):
    clean_node(crio)
    return crio


def agent_maker(tmp_path, crio, registry):
    """Yields make(**flags) -> a started AgentProcess against `crio`; stops them all after."""
    started: list[AgentProcess] = []

    def make(**overrides: str) -> AgentProcess:
        agent = AgentProcess(tmp_path / f"agent{len(started)}", crio, registry, **overrides)
        agent.start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture
def agent_factory(tmp_path, node, registry):
    yield from agent_maker(tmp_path, node, registry)


@pytest.fixture
def agent(agent_factory) -> AgentProcess:
    return agent_factory()


async def apply(agent: AgentProcess, *sets: SetSpec, **options) -> tuple[list, grpc.aio.AioRpcError | None]:
    """Runs an Apply to the end: (events, error or None)."""
    events = []
    async with agent.client() as client:
        try:
            async for event in client.apply(sets, **options):
                events.append(event)
        except grpc.aio.AioRpcError as e:
            return events, e
    return events, None




@pytest.fixture(scope="session")
def crios(peers_root, registry, auth_registry):
    """One CRI-O per node of the pinctl cluster (tests/e2e/cluster.py)."""
    from tests.e2e.cluster import NODES
    nodes = {}
    try:
        for name in NODES:
            nodes[name] = Crio(peers_root / f"crio-{name}", registries=[registry.host, auth_registry.host])
            nodes[name].start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.fixture
def cluster(tmp_path, crios, registry, workload):
    """The 3-node, 2-pool cluster with clean nodes, an agent each and the file written."""
    from tests.e2e.cluster import Cluster
    for crio in crios.values():
        clean_node(crio)
    c = Cluster(tmp_path, crios, registry, workload)
    for name in c.nodes:
        c.start_agent(name)
    c.write(["app-a", "oci"], ["three-layers"])
    yield c
    c.stop()
