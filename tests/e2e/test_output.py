"""One output contract for every command of `pinctl` and `pinsvc` (issue 18, item 3), against
real agents: `-o yaml` prints YAML and `-o json` JSON everywhere, with the API's camelCase
keys, numbers as numbers and zero values present; exit codes 0 (done and healthy), 1
(degraded or failed, the reason on stderr), 2 (usage); errors that say what to do; no
BrokenPipe traceback; `--version`; no silent plaintext to a TCP agent; gRPC reflection v1
with the API's JSON names and comments."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_reflection.v1alpha import reflection_pb2
from google.protobuf import descriptor_pb2

from tests.e2e.helpers import free_port

CAMEL = re.compile(r"[a-z][a-zA-Z0-9]*")


def run(*argv: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout, input=stdin)


def keys(value, path="") -> list[tuple[str, str]]:
    """(path, key) of every mapping key in a parsed document."""
    if isinstance(value, dict):
        return [(path, k) for k in value] + [kp for k, v in value.items() for kp in keys(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [kp for v in value for kp in keys(v, path)]
    return []


def parsed(out: str, output: str):
    """The document, checked to be in the asked format: JSON for json; YAML, and not JSON,
    for yaml."""
    if output == "json":
        return json.loads(out)
    assert not out.lstrip().startswith(("{", "[")), f"-o yaml printed JSON:\n{out[:300]}"
    return yaml.safe_load(out)


def camel_case(doc) -> None:
    bad = [f"{path}.{key}" for path, key in keys(doc) if not CAMEL.fullmatch(key)]
    assert not bad, f"keys not in camelCase: {bad[:10]}"


@pytest.fixture
def pinned(cluster):
    code, _, err = cluster.pinctl("rollout")
    assert code == 0, err
    return cluster


def commands(cluster) -> dict[str, list[str]]:
    """Every command that prints a document, as argv after `python -m`."""
    n1, image = cluster.agents["n1"].endpoint, cluster.workload["oci"]
    sets = cluster.workdir / "sets.json"
    sets.write_text(json.dumps([{"name": "worker-set", "generation": 1,
                                 "images": [cluster.workload["app-a"], cluster.workload["oci"]]}]))
    objects = cluster.workdir / "sets.yaml"
    objects.write_text(yaml.safe_dump({"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
                                       "metadata": {"name": "worker-set", "generation": 1},
                                       "spec": {"pinnedImages": [{"name": cluster.workload["app-a"]},
                                                                 {"name": cluster.workload["oci"]}]}}))
    cluster_args = ["-f", str(cluster.file), "--endpoints", str(cluster.endpoints)]
    return {
        "pinctl plan": ["pinsvc.coordinator.cli", "plan", *cluster_args],
        "pinctl rollout": ["pinsvc.coordinator.cli", "rollout", *cluster_args, "--record-dir",
                           str(cluster.record_dir)],
        "pinctl status": ["pinsvc.coordinator.cli", "status", *cluster_args],
        "pinctl node status": ["pinsvc.coordinator.cli", "node", "status", "--endpoint", n1],
        "pinctl node check-space": ["pinsvc.coordinator.cli", "node", "check-space", "--endpoint", n1, image],
        "pinctl node apply": ["pinsvc.coordinator.cli", "node", "apply", "--endpoint", n1, "-f", str(objects)],
        "pinsvc status": ["pinsvc", "status", "--endpoint", n1],
        "pinsvc check-space": ["pinsvc", "check-space", "--endpoint", n1, image],
        "pinsvc apply": ["pinsvc", "apply", "--endpoint", n1, str(sets)],
    }


def test_every_command_prints_yaml_or_json_as_asked_in_camel_case_with_numbers(pinned):
    for name, argv in commands(pinned).items():
        for output in ("yaml", "json"):
            proc = run(*argv, "-o", output)
            assert proc.returncode == 0, f"{name} -o {output}: {proc.stderr}"
            doc = parsed(proc.stdout, output)
            camel_case(doc)
    plan = json.loads(run(*commands(pinned)["pinctl node check-space"], "-o", "json").stdout)
    assert plan["requiredBytes"] == 0 and plan["compressedBytes"] == 0, "zero values are present, as numbers"
    assert isinstance(plan["freeBytes"], int) and plan["fits"] is True
    status = json.loads(run(*commands(pinned)["pinsvc status"], "-o", "json").stdout)
    entry = status["pinnedImageSets"][0]
    assert entry["currentGeneration"] == 1 and entry["lastFailedGeneration"] == 0
    pools = json.loads(run(*commands(pinned)["pinctl plan"], "-o", "json").stdout)["pools"]
    node = pools[0]["nodes"][0]
    assert isinstance(node["requiredBytes"], int) and "required_bytes" not in node


def test_a_degraded_node_exits_1_with_the_reason_on_stderr(pinned, registry):
    from devenv import images as fixture_images
    missing = fixture_images.missing_ref(registry.host)
    pinned.write(["app-a", missing], ["three-layers"])
    code, _, err = pinned.pinctl("rollout", "--abort-after", "0")
    assert code == 1 and missing in err
    argv = commands(pinned)
    for name in ("pinctl node status", "pinsvc status", "pinctl status"):
        proc = run(*argv[name], "-o", "json")
        assert proc.returncode == 1, f"{name}: {proc.returncode} {proc.stderr}"
        assert "PrefetchFailed" in proc.stderr or "not at the desired content" in proc.stderr, name
        assert missing in proc.stderr, f"{name} says why: {proc.stderr}"
        json.loads(proc.stdout)
    proc = run(*argv["pinctl plan"], "-o", "json")
    assert proc.returncode == 1 and missing in proc.stderr, f"plan says why on stderr: {proc.stderr}"


def test_usage_errors_exit_2_with_the_subcommands_usage(pinned):
    for argv, usage in ((["pinsvc.coordinator.cli", "node", "status", "--endpoint", "unix:///x", "--bogus"],
                         "usage: pinctl node status"),
                        (["pinsvc.coordinator.cli", "rollout", "-f", "x", "--bogus"], "usage: pinctl rollout"),
                        (["pinsvc", "status", "--bogus"], "usage: pinsvc status")):
        proc = run(*argv)
        assert proc.returncode == 2 and proc.stderr.startswith(usage), proc.stderr
        assert "--bogus" in proc.stderr


def test_errors_say_what_to_do_about_a_missing_or_forbidden_socket(pinned):
    gone = pinned.workdir / "nowhere.sock"
    for argv in (["pinsvc.coordinator.cli", "node", "status"], ["pinsvc", "status"]):
        proc = run(*argv, "--endpoint", f"unix://{gone}")
        assert proc.returncode == 1
        assert f"no agent at {gone}" in proc.stderr and "pinsvc agent" in proc.stderr, proc.stderr

    # A socket of mode 0600 owned by root, asked by another user (nobody).
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to run as another user")
    shared = Path(tempfile.mkdtemp(prefix="pinsvc-perm-"))
    try:
        shared.chmod(0o755)
        agent = pinned.start_agent("n2", **{"server-socket": str(shared / "agent.sock")})
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "pinsvc.coordinator.cli", "node", "status", "--endpoint", f"unix://{agent.socket}"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/"})
        assert proc.returncode == 1
        assert "permission denied" in proc.stderr and "run as root" in proc.stderr, proc.stderr
        assert "--server-socket-group" in proc.stderr
    finally:
        pinned.start_agent("n2")
        shutil.rmtree(shared, ignore_errors=True)


def test_a_closed_pipe_is_not_a_traceback(pinned):
    for argv in (commands(pinned)["pinctl node status"], commands(pinned)["pinsvc status"],
                 ["pinsvc.coordinator.cli", "--help"]):
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # as `| head` does once it has read enough
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_both_commands_have_version():
    for module, prog in (("pinsvc.coordinator.cli", "pinctl"), ("pinsvc", "pinsvc")):
        proc = run(module, "--version")
        assert proc.returncode == 0 and re.fullmatch(rf"{prog} \d+\.\d+\.\d+\S*\n", proc.stdout), proc


def test_a_tcp_endpoint_without_tls_is_refused_unless_insecure(pinned):
    port = free_port()
    pinned.start_agent("n3", **{"server-tcp": f"127.0.0.1:{port}", "server-insecure": True})
    try:
        for argv in (["pinsvc.coordinator.cli", "node", "status"], ["pinsvc", "status"]):
            proc = run(*argv, "--endpoint", f"127.0.0.1:{port}")
            assert proc.returncode == 2, proc.stdout
            assert "mutual TLS" in proc.stderr and "--tls-cert" in proc.stderr and "--insecure" in proc.stderr
            proc = run(*argv, "--endpoint", f"127.0.0.1:{port}", "--insecure", "-o", "json")
            assert proc.returncode == 0, proc.stderr
            assert "plaintext" in proc.stderr, "--insecure is loud"
        help = re.sub(r"\s+", " ", run("pinsvc.coordinator.cli", "node", "status", "--help").stdout)
        assert "mutual TLS" in help and "--insecure" in help
    finally:
        pinned.start_agent("n3")


def _reflect(endpoint: str, service: str, request: reflection_pb2.ServerReflectionRequest):
    with grpc.insecure_channel(endpoint.replace("unix://", "unix:", 1)) as channel:
        call = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        return next(iter(call(iter([request]), timeout=10)))


def test_reflection_v1_serves_the_api_with_json_names_and_comments(pinned):
    endpoint = pinned.agents["n1"].endpoint
    for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
        listed = _reflect(endpoint, service, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert {"pinsvc.v1.PinService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names
        answer = _reflect(endpoint, service, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="pinsvc.v1.PinService"))
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in answer.file_descriptor_response.file_descriptor_proto]
        (api,) = [f for f in files if f.package == "pinsvc.v1"]
        status = next(m for m in api.message_type if m.name == "NodeStatus")
        assert {f.name: f.json_name for f in status.field}["pinned_image_sets"] == "pinnedImageSets"
        comments = " ".join(loc.leading_comments for loc in api.source_code_info.location)
        assert "shaped like MachineConfigNode" in comments
    v1 = _reflect(endpoint, "grpc.reflection.v1.ServerReflection", reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    assert v1.file_descriptor_response.file_descriptor_proto, "the v1 service describes itself"
