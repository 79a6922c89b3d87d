"""Health that tells the truth (issue 18): an agent whose container runtime does not answer is
NOT_SERVING, as the ecosystem's own client (grpcurl) and `pinsvc health` see it, and its
status names the problem; it becomes SERVING when a real CRI-O appears, NOT_SERVING again
when it goes, while `liveness` (the liveness and startup probes) stays SERVING throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.paths import bin_path

INTERVAL = 0.5  # --cri-health-interval-seconds of the agent under test


def grpcurl(agent: AgentProcess, service: str) -> str:
    """grpc.health.v1.Health/Check of `service` through grpcurl (its JSON `status`). The socket
    as a `unix://` target: grpcurl 1.9.2 and 1.9.3 ignore `-unix` (fullstorydev/grpcurl#546)."""
    done = subprocess.run([str(bin_path("grpcurl")), "-plaintext", "-d", json.dumps({"service": service}),
                           agent.endpoint, "grpc.health.v1.Health/Check"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["status"]


def command(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)


def wait_for(agent: AgentProcess, status: str, timeout: float) -> float:
    """Seconds until the whole server's health is `status`."""
    t0 = time.monotonic()
    while (now := agent.health("")) != status:
        assert time.monotonic() - t0 < timeout, f"health still {now} after {timeout}s:\n{agent.log()[-3000:]}"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
def late_crio(peers_root, registry):
    """A CRI-O whose socket the agent is given before it runs."""
    crio = Crio(peers_root / "late-crio", registries=[registry.host])
    yield crio
    crio.stop()


def test_an_agent_without_its_runtime_is_not_serving_until_the_runtime_answers(tmp_path, late_crio, registry):
    agent = AgentProcess(tmp_path / "agent", late_crio, registry, **{"cri-health-interval-seconds": str(INTERVAL)})
    agent.start(runtime=False)
    try:
        # What a user's own tool sees: the server and the PinService are not serving; the agent lives.
        assert grpcurl(agent, "") == "NOT_SERVING"
        assert grpcurl(agent, "pinsvc.v1.PinService") == "NOT_SERVING"
        assert grpcurl(agent, "liveness") == "SERVING"
        # `pinsvc health` (the readiness probe) says so, with the reason; the liveness probe passes.
        done = command("pinsvc", "health", "--endpoint", agent.endpoint)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith("NOT_SERVING: RuntimeUnreachable: container runtime at "
                                      f"{late_crio.endpoint} is not reachable"), done.stderr
        done = command("pinsvc", "health", "--endpoint", agent.endpoint, "--service", "liveness")
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        # The status carries the condition, and pinctl exits 1 naming it.
        done = command("pinsvc.coordinator.cli", "node", "status", "--endpoint", agent.endpoint, "-o", "json")
        assert done.returncode == 1, done.stdout + done.stderr
        (degraded,) = [c for c in json.loads(done.stdout)["status"]["conditions"]
                       if c["type"] == "PinnedImageSetsDegraded"]
        assert (degraded["status"], degraded["reason"]) == ("True", "RuntimeUnreachable")
        assert late_crio.endpoint in degraded["message"] and "RuntimeUnreachable" in done.stderr

        with grpc.insecure_channel(f"unix:{agent.socket}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            late_crio.start()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # pushed to a watcher
            watch.cancel()
        assert wait_for(agent, "SERVING", INTERVAL + 5) < INTERVAL + 5
        assert grpcurl(agent, "") == grpcurl(agent, "pinsvc.v1.PinService") == "SERVING"
        done = command("pinsvc", "health", "--endpoint", agent.endpoint)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        done = command("pinsvc.coordinator.cli", "node", "status", "--endpoint", agent.endpoint, "-o", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not [c for c in json.loads(done.stdout)["status"].get("conditions", []) if c["status"] == "True"]

        # The runtime goes (a CRI-O restart): not ready, still alive; then ready again.
        late_crio.stop()
        wait_for(agent, "NOT_SERVING", INTERVAL + 15)
        assert grpcurl(agent, "liveness") == "SERVING"
        late_crio.start()
        wait_for(agent, "SERVING", INTERVAL + 15)
        assert agent.proc.poll() is None
    finally:
        agent.stop()
    log = agent.log()
    assert "is not reachable" in log and "health NOT_SERVING until it answers" in log
    assert "container runtime answers again: cri-o " in log
