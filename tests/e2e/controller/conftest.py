"""One set of real peers for the controller's e2e tests, per session: etcd and kube-apiserver
with OpenShift's CRDs and the controller's RBAC from deploy/, and 4 nodes (a real CRI-O and
its pinsvc agent each, with a registry of test images). Each test runs the controller as a
subprocess with a token of its ServiceAccount, so it has exactly the permissions
deploy/kubernetes/controller.yaml grants."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from devenv import cluster
from devenv.controller import TEST_LEASE, ControllerProcess
from devenv.environment import Environment
from devenv.kube import KubeCluster, missing
from devenv.paths import REPO
from tests.e2e.helpers import free_port

REASON = missing()
if os.geteuid() != 0:
    REASON = "the controller's e2e tests run CRI-O and need root"
if REASON and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the controller's e2e tests: {REASON}")

NODES = ("worker-0", "worker-1", "worker-2", "worker-3")
CONTROLLER_YAML = REPO / "deploy" / "kubernetes" / "controller.yaml"


def pytest_collection_modifyitems(items):
    for item in items:
        if REASON and "tests/e2e/controller" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def kube_root():
    root = Path(tempfile.mkdtemp(prefix="pinsvc-kube-e2e-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kube(kube_root):
    """The API server with the controller's namespace, ServiceAccount and RBAC."""
    with KubeCluster(kube_root / "kube") as server:
        server.kubectl("create", "namespace", "pinsvc")
        rbac = [d for d in yaml.safe_load_all(CONTROLLER_YAML.read_text()) if d and d["kind"] != "Deployment"]
        server.apply(rbac)
        yield server


@pytest.fixture(scope="session")
def metrics_ports() -> dict[str, int]:
    return {name: free_port() for name in NODES}


@pytest.fixture(scope="session")
def nodes(kube_root, metrics_ports):
    """4 real nodes; each agent serves metrics (pinsvc_apply_total counts its Applies)."""
    env = Environment(kube_root / "nodes", {name: ("worker",) for name in NODES},
                      agent_flags=lambda name: {"server-metrics": f"127.0.0.1:{metrics_ports[name]}"})
    try:
        asyncio.run(env.start())
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def sa_kubeconfig(kube, kube_root) -> Path:
    return kube.token_kubeconfig("pinsvc-controller", "pinsvc", kube_root / "controller.kubeconfig")


@pytest.fixture
def controllers(kube, sa_kubeconfig, tmp_path):
    """start(identity, *args) -> a running controller with the ServiceAccount's token;
    every one is stopped after the test, and the cluster objects are removed."""
    started: list[ControllerProcess] = []

    def start(identity: str = "controller-a", *args: str) -> ControllerProcess:
        process = ControllerProcess(tmp_path, sa_kubeconfig, *TEST_LEASE, "--failure-backoff", "1",
                                    "--failure-backoff-max", "2", "--retries", "2", "--progress-after", "0.5", *args,
                                    identity=identity).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    for process in started:
        assert "Traceback" not in process.log(400), process.log(400)
    for kind in ("pinnedimagesets", "machineconfigpools", "nodes", "machineconfignodes"):
        kube.kubectl("delete", kind, "--all", "--wait=false")


def node_objects(env: Environment, names=NODES, role: str = "worker") -> list[dict]:
    return [cluster.node(name, (role,), endpoint=env.nodes[name].agent.endpoint) for name in names]


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, interval: float = 0.3):
    """Polls `check` until it returns something true; fails naming `what` and the last value."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")


def applies(metrics_ports: dict[str, int], name: str) -> int:
    """Applies the node's agent has served (its pinsvc_apply_total, every result)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_ports[name]}/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(r'^pinsvc_apply_total\{[^}]*\} ([0-9.e+]+)$', text, re.M)))

