"""OpenTelemetry as the specification says (issue 18), read back from a real OTLP receiver (the
devenv Jaeger takes OTLP over gRPC and over HTTP): the resource attributes of the environment
win over the built-in defaults, both protocols work, one pinsvc cannot speak is refused, and
the spans carry the semantic conventions' names, pinsvc's own under `pinsvc.`."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pinsvc import version
from pinsvc_client import SetSpec
from devenv.jaeger import spans
from tests.e2e.conftest import apply

NODE = "otel-node"


def agent_trace(jaeger, service: str) -> dict:
    """The agent's Apply trace, once CRI-O-facing and registry spans are in."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        traces = jaeger.traces(service, operation="apply", lookback="10m")
        if traces and any(s["name"].startswith("GET /v2/") for s in spans(traces[0])):
            return traces[0]
        time.sleep(0.2)
    raise AssertionError(f"no apply trace of {service} with its manifest GETs in Jaeger")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_receiver_sees_the_environments_resource_and_the_conventions_names(
        protocol, monkeypatch, jaeger, agent_factory, node, registry, workload):
    service = "pinsvc-agent-" + protocol.replace("/", "-")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       jaeger.otlp_endpoint if protocol == "grpc" else jaeger.otlp_http_endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES",
                       "host.name=otel-host,service.name=not-this-one,k8s.cluster.name=lab")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    agent = agent_factory(**{"node-name": NODE, "space-enabled": True})
    image = workload["app-a"]
    events, error = await apply(agent, SetSpec("otel", 1, (image,)))
    assert error is None, error
    agent.stop()  # flushes its spans

    trace = agent_trace(jaeger, service)
    (process,) = [p for p in trace["processes"].values() if p["serviceName"] == service]
    resource = {t["key"]: t["value"] for t in process["tags"]}
    assert resource["host.name"] == "otel-host"  # the environment's, not the node name
    assert resource["k8s.cluster.name"] == "lab"
    assert (resource["k8s.node.name"], resource["service.version"]) == (NODE, version())  # defaults kept
    ours = [s for s in spans(trace) if s["service"] == service]
    by_name = {s["name"]: s for s in ours}

    assert by_name["apply"]["tags"]["k8s.node.name"] == NODE
    pull = by_name["pull"]["tags"]
    name, _, digest = image.rpartition("@")
    assert (pull["container.image.name"], pull["oci.manifest.digest"], pull["pinsvc.image"]) == (name, digest, image)
    assert pull["pinsvc.result"] == "pulled" and pull["pinsvc.attempts"] == 1

    cri = by_name["/runtime.v1.ImageService/PullImage"]["tags"]
    assert (cri["span.kind"], cri["rpc.system"], cri["server.address"], cri["network.transport"]) == (
        "client", "grpc", str(node.socket), "unix")

    get = by_name["GET /v2/{name}/manifests/{reference}"]["tags"]
    host, port = registry.host.rsplit(":", 1)
    assert (get["span.kind"], get["http.request.method"], get["server.address"], get["server.port"],
            get["http.response.status_code"]) == ("client", "GET", host, int(port), 200)
    assert get["url.full"] == f"http://{registry.host}/v2/{name.split('/', 1)[1]}/manifests/{digest}"
    assert get["url.template"] == "/v2/{name}/manifests/{reference}"

    # Every attribute pinsvc sets is namespaced: a convention's name or pinsvc.*
    loose = {(s["name"], k) for s in ours for k in s["tags"] if "." not in k and k != "error"}
    assert not loose, loose


def test_a_protocol_pinsvc_cannot_speak_stops_the_agent_and_pinctl_naming_it(tmp_path, jaeger):
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http_endpoint}
    import os
    for argv in (["pinsvc", "agent", "--server-socket", str(tmp_path / "a.sock"), "--state-dir", str(tmp_path)],
                 ["pinsvc.coordinator.cli", "node", "status", "--endpoint", f"unix://{tmp_path}/a.sock"]):
        done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
        assert done.returncode == 2, done.stderr
        assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in done.stderr and "grpc or http/protobuf" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "a.sock").exists()
