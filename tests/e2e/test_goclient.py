"""The Go client (clients/go) against a real agent: `go test ./...` with the agent's unix
socket and mutual TLS endpoint in the environment, then the pins it made checked with
crictl and the agent's status from Python."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_mtls import pki, tcp_agent  # noqa: F401  (pki is a fixture)

GO_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "go"
SET = "go-client"  # the set clients/go/pinsvc/agent_test.go applies


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)
    if found is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the Go client tests: no go toolchain on PATH")
        pytest.skip("no go toolchain on PATH")
    return found


def run_go(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs go in clients/go; go.sum must be complete (-mod=readonly), modules come from
    the module cache or the proxy."""
    return subprocess.run([go_binary(), *args], cwd=GO_CLIENT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GOFLAGS": "-mod=readonly", **env})


@pytest.mark.timeout(900)  # the first run compiles grpc-go (minutes on 2 busy cores)
async def test_go_client_pins_through_a_real_agent(agent_factory, node, workload, pki):  # noqa: F811
    images = [workload["app-a"], workload["oci"], workload["multiarch"]]
    agent, tls_endpoint = tcp_agent(agent_factory, pki)
    env = {
        "PINSVC_TEST_ENDPOINT": agent.endpoint,
        "PINSVC_TEST_IMAGES": " ".join(images),
        "PINSVC_TEST_TLS_ENDPOINT": tls_endpoint,
        "PINSVC_TEST_TLS_CERT": str(pki.client.cert),
        "PINSVC_TEST_TLS_KEY": str(pki.client.key),
        "PINSVC_TEST_TLS_CA": str(pki.ca.cert),
    }
    assert not node.pinned_images(), "the node starts clean"

    done = run_go("test", "-count=1", "-v", "./...", env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    ran = set(re.findall(r"^--- PASS: (\w+)", output, flags=re.M))
    assert {"TestAgentCheckSpace", "TestAgentApplyPinsASet", "TestAgentRejectsABadReferenceWithInvalidArgument",
            "TestAgentOverMutualTLS"} <= ran, output
    assert "--- SKIP" not in output, output

    # What the Go client did, seen by the runtime and by the agent.
    assert set(images) <= node.pinned_images()
    async with agent.client() as client:
        status = await client.status()
    applied = {s.name: s for s in status.pinned_image_sets}
    assert list(applied) == [SET]
    assert applied[SET].current_generation == applied[SET].desired_generation > 0
    assert sorted(i.image for i in status.images if i.pinned) == sorted(images)


@pytest.mark.timeout(900)
def test_go_example_program_checks_space(agent, node, workload):
    image = workload["app-b"]
    done = run_go("run", "./cmd/pinsvc-example", "-endpoint", agent.endpoint, "-check-only", image, env={})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("space: "), done.stdout
    assert not node.images_json().get("images"), "check-only pulls nothing"

    done = run_go("run", "./cmd/pinsvc-example", "-endpoint", agent.endpoint, "-check-only", "registry.invalid/app:1",
                  env={})
    assert done.returncode == 1
    assert "InvalidArgument" in done.stderr and "registry.invalid/app:1" in done.stderr, done.stderr


@pytest.mark.timeout(900)
def test_go_example_program_fails_when_the_images_do_not_fit(agent_factory, node, workload):
    agent = agent_factory(**{"space-min-free-bytes": str(1 << 60)})
    done = run_go("run", "./cmd/pinsvc-example", "-endpoint", agent.endpoint, workload["app-b"], env={})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not pinned: the images do not fit: insufficient space" in done.stderr, done.stderr
    assert not node.images_json().get("images"), "nothing pulled"
