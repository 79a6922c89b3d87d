"""One trace per rollout, read back from a real Jaeger: coordinator -> agents -> CRI-O."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import pytest
import yaml

from devenv import images as fixture_images
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.jaeger import spans
from tests.e2e.conftest import AUTH_PASSWORD, AUTH_USER

MISSING = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def traced_nodes(peers_root, registry, auth_registry, jaeger):
    tracing = ("[crio.tracing]\nenable_tracing = true\n"
               f'tracing_endpoint = "{jaeger.otlp_endpoint.removeprefix("http://")}"\n'
               "tracing_sampling_rate_per_million = 0\n")  # only what a caller's trace samples
    nodes = {}
    try:
        for name in ("tr1", "tr2"):
            nodes[name] = Crio(peers_root / f"crio-{name}", registries=[registry.host, auth_registry.host],
                               extra_config=tracing)
            nodes[name].start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def test_a_rollout_is_one_trace_across_coordinator_agents_and_crio(tmp_path, jaeger, traced_nodes, registry,
                                                                    auth_registry, workload):
    (private,) = asyncio.run(fixture_images.push_many(
        auth_registry.host, [fixture_images.build_image("team/traced", [fixture_images.make_layer("traced", 32 << 10)])],
        auth=(AUTH_USER, AUTH_PASSWORD)))
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    secret = tmp_path / "config.json"
    secret.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    missing = workload["oci"].split("@")[0] + "@" + MISSING
    good = [workload["app-a"], workload["oci"], private]
    agents = {}
    try:
        for name, space in (("tr1", True), ("tr2", False)):  # tr2 pulls the missing image for real
            agents[name] = AgentProcess(tmp_path / name, traced_nodes[name], registry, **{
                "node-name": name, "otlp-endpoint": jaeger.otlp_endpoint, "registry-pull-secret": str(secret),
                "registry-insecure": f"{registry.host},{auth_registry.host}", "space-enabled": space,
                "log-format": "json"})
            agents[name].start()
        cluster = tmp_path / "cluster.yaml"
        cluster.write_text(yaml.safe_dump_all([
            {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
             "metadata": {"name": "apps"}, "spec": {"pinnedImages": [{"name": i} for i in good]}},
            {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
             "metadata": {"name": "broken"}, "spec": {"pinnedImages": [{"name": missing}]}},
            {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
             "metadata": {"name": "worker"},
             "spec": {"nodeSelector": {"matchLabels": {"node-role.kubernetes.io/worker": ""}},
                      "machineConfigSelector": {"matchLabels": {"machineconfiguration.openshift.io/role": "worker"}}}},
            *({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": n, "labels": {"node-role.kubernetes.io/worker": ""}},
               "status": {"conditions": [{"type": "Ready", "status": "True"}]}} for n in agents)]))
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(yaml.safe_dump({n: a.endpoint for n, a in agents.items()}))
        proc = subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", "--otlp-endpoint", jaeger.otlp_endpoint,
                               "rollout", "-f", str(cluster), "--endpoints", str(endpoints), "--abort-after", "0",
                               "--record-dir", str(tmp_path / "records"), "-o", "json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr  # the broken set degrades the pool
    finally:
        for agent in agents.values():
            agent.stop()  # flushes the agents' spans

    (rollout,) = [t for t in jaeger.traces("pinctl", operation="rollout")]
    trace_id = rollout["traceID"]
    trace = jaeger.wait_for_spans(trace_id, lambda t: sum(s["service"] == "crio" for s in spans(t)) > 0, timeout=15)
    all_spans = spans(trace)
    by_id = {s["id"]: s for s in all_spans}
    hosts = {pid: {t["key"]: t["value"] for t in p["tags"]}.get("host.name") for pid, p in trace["processes"].items()}
    services = {p["serviceName"] for p in trace["processes"].values()}
    assert {"pinctl", "pinsvc-agent", "crio"} <= services, services
    agent_hosts = {hosts[pid] for pid, p in trace["processes"].items() if p["serviceName"] == "pinsvc-agent"}
    assert agent_hosts == {"tr1", "tr2"}, "spans from each agent"

    def node_of(span):
        return hosts[next(raw["processID"] for raw in trace["spans"] if raw["spanID"] == span["id"])]

    # rollout -> pool -> node -> (gRPC client -> agent server ->) apply
    (pool,) = [s for s in all_spans if s["name"] == "pool"]
    assert by_id[pool["parent_id"]]["name"] == "rollout"
    node_spans = {s["tags"]["k8s.node.name"]: s for s in all_spans if s["name"] == "node"}
    assert set(node_spans) == {"tr1", "tr2"} and all(s["parent_id"] == pool["id"] for s in node_spans.values())
    applies = {node_of(s): s for s in all_spans if s["name"] == "apply"}
    assert set(applies) == {"tr1", "tr2"}
    for node, apply in applies.items():
        ancestors = []
        parent = apply["parent_id"]
        while parent:
            ancestors.append(by_id[parent])
            parent = by_id[parent]["parent_id"]
        assert node_spans[node] in ancestors, f"{node}: apply is under its node span"

    # One pull span per image per node, child of that node's apply.
    pulls = [s for s in all_spans if s["name"] == "pull"]
    for node, expected in (("tr1", set(good)), ("tr2", set(good) | {missing})):
        mine = [s for s in pulls if node_of(s) == node]
        assert sorted(s["tags"]["pinsvc.image"] for s in mine) == sorted(expected), node
        assert all(s["parent_id"] == applies[node]["id"] for s in mine)
        for s in mine:  # the semantic conventions' container.image.name and oci.manifest.digest
            name, _, digest = s["tags"]["pinsvc.image"].rpartition("@")
            assert (s["tags"]["container.image.name"], s["tags"]["oci.manifest.digest"]) == (name, digest)
    (failed,) = [s for s in pulls if s["tags"]["pinsvc.image"] == missing]
    assert failed["error"] and "not found" in failed["tags"]["otel.status_description"].lower()
    assert failed["tags"]["pinsvc.result"] == "failed"
    # tr1 sized the images it lacked from the registry manifests (one CLIENT span per HTTP
    # request under each manifest span); the missing one failed there with the registry's 404.
    space = [s for s in all_spans if s["name"] == "space check" and node_of(s) == "tr1"]
    manifests = [s for s in all_spans if s["name"] == "manifest" and s["parent_id"] == space[0]["id"]]
    assert missing in {s["tags"]["pinsvc.image"] for s in manifests} <= set(good) | {missing}
    gets = [s for s in all_spans if s["name"] == "GET /v2/{name}/manifests/{reference}"
            and by_id[s["parent_id"]] in manifests]
    assert gets and all(s["tags"]["span.kind"] == "client" and s["tags"]["http.request.method"] == "GET"
                        for s in gets)
    assert 404 in {s["tags"]["http.response.status_code"] for s in gets}
    # The runtime's own spans hang under the agent's CRI calls.
    crio_pulls = [s for s in all_spans if s["service"] == "crio" and s["name"] == "runtime.v1.ImageService/PullImage"]
    assert crio_pulls and all(by_id[s["parent_id"]]["service"] == "pinsvc-agent" for s in crio_pulls)
    for s in crio_pulls:  # the agent's CRI client span names the runtime's socket
        client = by_id[s["parent_id"]]["tags"]
        assert (client["span.kind"], client["network.transport"]) == ("client", "unix")
        assert client["server.address"] == str(traced_nodes[node_of(by_id[s["parent_id"]])].socket)
    for stage in ("drop-in write", "reload", "verify"):
        assert {node_of(s) for s in all_spans if s["name"] == stage} == {"tr1", "tr2"}, stage
    # Never a credential.
    text = json.dumps(trace)
    assert AUTH_PASSWORD not in text and token not in text
    # JSON logs carry the trace id on the lines of the traced request.
    lines = [json.loads(line) for line in (tmp_path / "tr1" / "agent.log").read_text().splitlines()
             if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id for line in lines)
