"""deploy/: the Kubernetes manifests and the systemd unit, checked with real validators.

- kubeconform v0.7.0 (built by scripts/install-peers.sh) in -strict mode against the
  Kubernetes 1.37 JSON schemas that the kubernetes-validate package ships (nothing is
  downloaded); the same documents through kubernetes-validate itself, strict.
- What a schema cannot see: the agent's flags and probe commands are parsed by the real
  `pinsvc` parsers and settings loader, the probe runs against a real agent on a unix
  socket, every host path the agent's flags name is mounted, the coordinator's RBAC is
  read-only and limited to the three kinds it reads.
- The systemd unit with `systemd-analyze verify` (systemd 252 is installed here; it is not
  PID 1 on this machine, so the unit is verified, not started), any warning failing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from devenv.paths import bin_path
from pinsvc import config
from pinsvc.adapters.registries_conf import runtime_paths
from pinsvc.adapters.runtime_process import RuntimeProcess
from pinsvc.coordinator.cli import parser as pinctl_parser
from tests.packaging.conftest import K8S_VERSION

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
UNIT = ROOT / "deploy" / "systemd" / "pinsvc-agent.service"
PINSVC = Path(sys.executable).parent / "pinsvc"


def documents() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def find(kind: str, name: str) -> dict:
    matches = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


# --- schema validation -------------------------------------------------------------------

def kubeconform(schemas: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_path("kubeconform")), "-strict", "-summary", "-output", "json",
                           "-kubernetes-version", K8S_VERSION, "-schema-location", schemas, *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_manifests_pass_kubeconform_strict(schemas):
    done = kubeconform(schemas, *MANIFESTS)
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report["resources"], indent=1) + done.stderr
    summary = report["summary"]
    assert summary == {"valid": len(documents()), "invalid": 0, "errors": 0, "skipped": 0}
    assert len(documents()) == 16  # agent.yaml 3, coordinator.yaml 5, controller.yaml 8


def test_kubeconform_rejects_a_misspelt_field(schemas, tmp_path):
    daemonset = find("DaemonSet", "pinsvc-agent")
    daemonset["spec"]["template"]["spec"]["hostPid"] = True  # hostPID misspelt
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(daemonset))
    done = kubeconform(schemas, bad)
    assert done.returncode == 1
    assert "additional properties 'hostPid' not allowed" in done.stdout


def test_manifests_pass_kubernetes_validate_strict():
    for document in documents():
        assert kubernetes_validate.validate(document, K8S_VERSION, strict=True) == "1.37"
    daemonset = find("DaemonSet", "pinsvc-agent")
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(daemonset, K8S_VERSION, strict=True)


# --- the agent DaemonSet -----------------------------------------------------------------

def agent_container(daemonset: dict | None = None) -> dict:
    """The agent container of `daemonset` (default: deploy/kubernetes/agent.yaml's)."""
    return (daemonset or find("DaemonSet", "pinsvc-agent"))["spec"]["template"]["spec"]["containers"][0]


def expand(arg: str) -> str:
    """The kubelet's $(VAR) expansion for the two variables the DaemonSet defines."""
    return arg.replace("$(NODE_NAME)", "node-a").replace("$(HOST_IP)", "10.0.0.5")


def agent_settings(daemonset: dict | None = None) -> config.Settings:
    """The agent's settings from the DaemonSet's arguments, parsed by the agent's own parser."""
    container = agent_container(daemonset)
    assert container["command"] == ["pinsvc", "agent"]
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.load(p.parse_args([expand(a) for a in container["args"]]), env={})


class HostPaths:
    """Where a path of the DaemonSet's agent container is, through its volume mounts."""

    def __init__(self, daemonset: dict) -> None:
        self.pod = daemonset["spec"]["template"]["spec"]
        self.mounts = {m["mountPath"]: m for m in agent_container(daemonset)["volumeMounts"]}
        self.volumes = {v["name"]: v for v in self.pod["volumes"]}

    def mount_of(self, path: Path | str) -> dict:
        path = Path(path)
        best = max((m for m in self.mounts if path == Path(m) or Path(m) in path.parents), key=len, default=None)
        assert best, f"{path} is not on any volume mount"
        return self.mounts[best]

    def volume_of(self, path: Path | str) -> dict:
        return self.volumes[self.mount_of(path)["name"]]

    def host_path(self, path: Path | str) -> str:
        """Where `path` in the container is on the host."""
        mount, volume = self.mount_of(path), self.volume_of(path)
        assert "hostPath" in volume, f"{path} is not on a hostPath volume"
        return str(Path(volume["hostPath"]["path"]) / Path(path).relative_to(mount["mountPath"]))


def test_agent_flags_exist_and_mean_what_the_readme_says():
    s = agent_settings()
    assert (s.node_name, s.cri_endpoint, s.server.tcp) == ("node-a", "unix:///var/run/crio/crio.sock", "10.0.0.5:9440")
    assert (s.server.tls_cert, s.server.tls_key, s.server.tls_client_ca) == (
        "/etc/pinsvc/tls/tls.crt", "/etc/pinsvc/tls/tls.key", "/etc/pinsvc/tls/ca.crt")
    assert not s.server.insecure and s.server.metrics == "127.0.0.1:9441"
    assert (s.reload.strategy, s.reload.process_name, str(s.reload.pidfile)) == ("signal", "crio", ".")
    assert (s.dropin_path, s.dropin_temp_dir, s.dropin.crio_binary) == (
        Path("/etc/crio/crio.conf.d/50-pinned-images"), Path("/etc/crio"), "")
    pod = find("DaemonSet", "pinsvc-agent")["spec"]["template"]["spec"]
    assert pod["hostPID"] and pod["hostNetwork"] and pod["securityContext"]["runAsUser"] == 0


def test_every_host_path_the_agent_uses_is_mounted():
    s = agent_settings()
    daemonset = find("DaemonSet", "pinsvc-agent")
    paths = HostPaths(daemonset)
    cri_socket = Path(s.cri_endpoint.removeprefix("unix://"))
    assert paths.host_path(cri_socket) == "/var/run/crio/crio.sock"
    # its directory is mounted, not the socket file: a restarted CRI-O makes a new socket there
    assert paths.volume_of(cri_socket)["hostPath"]["type"] == "Directory"
    # the temp file and the drop-in must be on ONE mount, or the rename fails (EXDEV)
    assert paths.mount_of(s.dropin_temp_dir) is paths.mount_of(s.dropin_path)
    assert paths.host_path(s.dropin_path) == "/etc/crio/crio.conf.d/50-pinned-images"
    assert paths.host_path(s.registry.pull_secret) == "/var/lib/kubelet/config.json"
    assert paths.mount_of(s.registry.pull_secret).get("readOnly") is True
    # the registries configuration of a CRI-O started without registries flags, as on a node
    defaults = runtime_paths(RuntimeProcess(1, ("crio",), {}, "/root"))
    for path in (defaults.conf, defaults.dirs[0], defaults.certs_dirs[1]):
        assert paths.host_path(path) == str(path) and paths.mount_of(path).get("readOnly") is True
    assert paths.host_path(s.state_dir) == "/var/lib/pinsvc"
    # the space check statvfs()es the image filesystem CRI-O's ImageFsInfo names (its
    # graphroot's overlay-images); without it every Apply fails (tests/packaging/test_image_run.py)
    store = "/var/lib/containers/storage/overlay-images"
    assert paths.host_path(store) == store and paths.mount_of(store).get("readOnly") is True
    assert paths.host_path(s.server.socket) == "/run/pinsvc/pinsvc.sock"
    for tls in (s.server.tls_cert, s.server.tls_key, s.server.tls_client_ca):
        assert paths.volume_of(tls)["secret"]["secretName"] == "pinsvc-agent-tls"
    assert {t["key"] for t in paths.pod["tolerations"]} == {"node-role.kubernetes.io/control-plane",
                                                           "node-role.kubernetes.io/master"}
    assert set(agent_container()["resources"]) == {"requests", "limits"}


@pytest.fixture
def agent(tmp_path):
    """The real agent on a unix socket in a temp dir, with no runtime behind it, as in a pod
    before CRI-O answers: alive (liveness), not ready (the runtime does not answer)."""
    sock = tmp_path / "pinsvc.sock"
    (tmp_path / "crio.conf.d").mkdir()
    proc = subprocess.Popen([str(PINSVC), "agent", f"--server-socket={sock}", "--cri-endpoint",
                             f"unix://{tmp_path}/no-crio.sock", f"--dropin-directory={tmp_path}/crio.conf.d",
                             "--dropin-crio-binary=", "--reload-strategy=none", f"--state-dir={tmp_path}/state",
                             "--otlp-endpoint=none"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the agent did not create its socket"
        time.sleep(0.05)
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probe_commands_report_a_real_agent(agent, probe, tmp_path):
    """Startup and liveness pass while the agent serves (a CRI-O restart must not restart it);
    readiness fails while the runtime does not answer, saying so (tests/e2e/test_health.py:
    it passes once CRI-O answers)."""
    command = agent_container()[probe]["exec"]["command"]
    assert command[:2] == ["pinsvc", "health"] and "unix:///run/pinsvc/pinsvc.sock" in command
    argv = [str(PINSVC)] + [f"unix://{agent}" if a == "unix:///run/pinsvc/pinsvc.sock" else a for a in command[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if probe == "readinessProbe":
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith("NOT_SERVING: RuntimeUnreachable: container runtime at unix://"), done.stderr
    else:
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
    gone = [f"unix://{tmp_path}/absent.sock" if a.startswith("unix://") else a for a in argv]
    done = subprocess.run(gone, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and f"pinsvc health: unix:{tmp_path}/absent.sock: UNAVAILABLE" in done.stderr


def test_health_of_an_unknown_service_fails(agent):
    done = subprocess.run([str(PINSVC), "health", "--endpoint", f"unix://{agent}", "--service", "nope"],
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr.strip()) == (1, "SERVICE_UNKNOWN")
    done = subprocess.run([str(PINSVC), "health", "--endpoint", "10.0.0.5:9440"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "endpoint '10.0.0.5:9440': want the agent's unix socket, unix:///path or /path" in done.stderr


# --- the coordinator ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,name", [("CronJob", "pinsvc-rollout"), ("Job", "pinsvc-rollout-once")])
def test_coordinator_runs_pinctl_in_kube_mode_as_non_root(kind, name):
    job = find(kind, name)["spec"]
    pod = (job["jobTemplate"]["spec"] if kind == "CronJob" else job)["template"]["spec"]
    container = pod["containers"][0]
    args = pinctl_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.command, args.kube, args.kubeconfig) == ("rollout", True, None)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        assert str(Path(path).parent) in mounts
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PINCTL_RECORD_DIR"] in mounts
    assert pod["serviceAccountName"] == "pinsvc-coordinator"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532


def test_coordinator_rbac_only_reads_nodes_pools_and_sets():
    role = find("ClusterRole", "pinsvc-coordinator")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    reads = ("get", "list", "watch")
    assert granted == {(g, r, v) for g, r in [("", "nodes"), ("machineconfiguration.openshift.io", "machineconfigpools"),
                                              ("machineconfiguration.openshift.io", "pinnedimagesets")] for v in reads}
    binding = find("ClusterRoleBinding", "pinsvc-coordinator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pinsvc-coordinator", "namespace": "pinsvc"}]
    assert binding["roleRef"]["name"] == "pinsvc-coordinator"


# --- systemd -----------------------------------------------------------------------------

def systemd_verify(unit: Path) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)


def test_systemd_unit_verifies_without_warnings(tmp_path):
    # verify checks that ExecStart exists: point it at this venv's pinsvc instead of /opt/pinsvc
    text = UNIT.read_text()
    assert "ExecStart=/opt/pinsvc/bin/pinsvc agent --config /etc/pinsvc/agent.toml" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/pinsvc/bin/pinsvc", str(PINSVC)))
    done = systemd_verify(unit)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strickt").replace("/opt/pinsvc/bin/pinsvc", str(PINSVC)))
    assert "Failed to parse protect system value, ignoring: strickt" in systemd_verify(unit).stderr


def test_systemd_unit_config_loads():
    s = config.load(file=ROOT / "deploy" / "systemd" / "agent.toml", env={})
    assert (s.reload.strategy, s.reload.systemd_unit, s.dropin.crio_binary) == ("systemctl", "crio", "crio")
    assert (str(s.server.socket), str(s.state_dir)) == ("/run/pinsvc/pinsvc.sock", "/var/lib/pinsvc")
    unit = UNIT.read_text()
    # what the agent writes is writable in the sandbox; the rest is read-only
    writable = re.search(r"^ReadWritePaths=(.*)$", unit, re.M).group(1).split()
    assert "ProtectSystem=strict" in unit and writable == [str(s.dropin_temp_dir)]
    assert s.dropin_path.parent.parent == s.dropin_temp_dir
    assert "StateDirectory=pinsvc" in unit and "RuntimeDirectory=pinsvc" in unit
    assert os.path.dirname(str(s.server.socket)) == "/run/pinsvc"
