"""One set of real peers per test session: a distribution registry with the small test
workload, one CRI-O (overlay storage, all state in a temp dir) and crictl. Each test gets a
clean node (no drop-in, no images) and its own agent process, `pinsvc agent`, started like
an operator would start it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinsvc.client import PinClient, SetSpec
from pinsvc.devenv import images as fixture_images
from pinsvc.devenv.crio import Crio
from pinsvc.devenv.paths import bin_path
from pinsvc.devenv.registry import Registry

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


@pytest.fixture(scope="session")
def crio(peers_root, registry):
    node = Crio(peers_root / "crio", registries=[registry.host])
    node.start()
    yield node
    node.stop()


def clean_node(crio: Crio) -> None:
    """No drop-in, no images, configuration reloaded."""
    for entry in crio.dropin_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    crio.reload()
    listing = crio.images_json().get("images", [])
    ids = [i["id"] for i in listing]
    if ids:
        crio.crictl("rmi", *ids)


class AgentProcess:
    """`pinsvc agent` as a subprocess against the session's CRI-O."""

    def __init__(self, workdir: Path, crio: Crio, registry: Registry, **overrides: str):
        self.workdir = workdir
        self.socket = workdir / "agent.sock"
        self.log_path = workdir / "agent.log"
        self.flags = {
            "node-name": "e2e-node",
            "cri-endpoint": crio.endpoint,
            "server-socket": str(self.socket),
            "state-dir": str(workdir / "state"),
            "dropin-directory": str(crio.dropin_dir),
            "dropin-crio-binary": str(crio.binary),
            "dropin-crio-config": str(crio.config_path),
            "reload-strategy": "signal",
            "reload-pidfile": str(crio.pidfile),
            "registry-insecure": registry.host,
            "registry-pull-secret": str(workdir / "config.json"),
            "pull-backoff-initial-seconds": "0.2",
            "pull-backoff-max-seconds": "0.5",
            "pull-max-attempts": "3",
            "verify-timeout-seconds": "5",
            **overrides,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "pinsvc", "agent"]
        for key, value in self.flags.items():
            args += [f"--{key}", value]
        return args

    def start(self, timeout: float = 15) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self._healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent did not become healthy in {timeout}s:\n{self.log()}")

    def _healthy(self) -> bool:
        with grpc.insecure_channel(f"unix:{self.socket}") as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> PinClient:
        return PinClient(self.endpoint)


@pytest.fixture
def node(crio):
    clean_node(crio)
    return crio


@pytest.fixture
def agent_factory(tmp_path, node, registry):
    started: list[AgentProcess] = []

    def make(**overrides: str) -> AgentProcess:
        agent = AgentProcess(tmp_path / f"agent{len(started)}", node, registry, **overrides)
        agent.start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


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


