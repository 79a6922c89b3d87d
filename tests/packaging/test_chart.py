"""deploy/helm/pinsvc: the Helm chart, with helm v4.3.2 (built by scripts/install-peers.sh).

- `helm lint --strict` with the default values and with non-default ones; values.schema.json
  and the templates refuse bad values with a message naming them;
- `helm template` with the default values renders exactly deploy/kubernetes/agent.yaml and
  controller.yaml, with the coordinator enabled coordinator.yaml too (the CRDs of crds/ only
  when asked);
- with non-default values (socket, drop-in directory, reload strategy, pull secret, port,
  metrics, tracing, image digest, namespace, labels, parts off) the agent's arguments mean
  them to the agent's own parser, every host path they name is mounted, and the
  controller's and the coordinator's arguments agree (port, TLS names);
- kubeconform -strict on both renderings; then a real kube-apiserver (devenv.kube, with
  OpenShift's CRDs): `kubectl apply --dry-run=server` of both, and `helm install`, `helm
  upgrade` to the non-default values, `helm uninstall`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from devenv.kube import KubeCluster, missing
from devenv.paths import MissingBinary, bin_path
from pinsvc.controller.cli import parser as controller_parser
from pinsvc.coordinator.cli import parser as pinctl_parser
from tests.packaging.test_deploy import HostPaths, agent_settings, kubeconform

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pinsvc"
DEPLOY = ROOT / "deploy" / "kubernetes"
HELM_VERSION = "v4.3.2"
DIGEST = "sha256:" + "0123456789abcdef" * 4

NON_DEFAULT = {
    "image": {"repository": "registry.example.com/infra/pinsvc", "digest": DIGEST, "pullPolicy": "Always"},
    "namespace": {"name": "pin-system", "create": True},
    "commonLabels": {"team": "infra"},
    "tls": {"agentSecret": "agents-mtls", "clientSecret": "clients-mtls", "serverName": "agents.pin-system"},
    "agent": {"criSocket": "/run/crio/crio.sock", "configDirectory": "/etc/crio/",
              "dropinDirectory": "/etc/crio/crio.conf.d", "pullSecret": "",
              "reload": {"strategy": "none"}, "port": 9555, "metrics": "", "logFormat": "text",
              "otlpEndpoint": "http://otel-collector.observability:4317",
              "extraArgs": ["--pull-parallelism=3"]},
    "controller": {"replicas": 3, "httpPort": 9090, "otlpEndpoint": "http://otel-collector.observability:4317"},
    "coordinator": {"enabled": False},
    "crds": {"install": True},
}


def helm_env(home: Path) -> dict[str, str]:
    """helm's own configuration, cache and data under `home`, never the user's."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    try:
        binary = bin_path("helm")
    except MissingBinary as e:
        pytest.fail(str(e)) if os.environ.get("CI") else pytest.skip(str(e))
    env = helm_env(tmp_path_factory.mktemp("helm-home"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=180, env=env)
        if check:
            assert done.returncode == 0, f"helm {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return done
    return run


@pytest.fixture(scope="module")
def values_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("values") / "values.yaml"
    path.write_text(yaml.safe_dump(NON_DEFAULT))
    return path


def render(helm, *args: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(helm("template", "pinsvc", str(CHART), *args).stdout) if d]


def key(document: dict) -> tuple[str, str, str]:
    return document["kind"], document["metadata"].get("namespace", ""), document["metadata"]["name"]


def by_key(documents: list[dict]) -> dict[tuple[str, str, str], dict]:
    found = {key(d): d for d in documents}
    assert len(found) == len(documents), "two objects of one kind, namespace and name"
    return found


def deploy_documents(*names: str) -> list[dict]:
    return [d for name in names for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_helm_version(helm):
    assert f'Version:"{HELM_VERSION}"' in helm("version").stdout


def test_lint_strict_with_default_and_other_values(helm, values_file):
    for args in ((), ("-f", str(values_file))):
        done = helm("lint", "--strict", str(CHART), *args)
        assert "0 chart(s) failed" in done.stdout and "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("setting,message", [
    ("agent.reload.strategy=systemctl", "at '/agent/reload/strategy': value must be one of 'signal', 'none'"),
    ("agent.dropinDirectory=/etc/containers/crio.d", 'agent.dropinDirectory "/etc/containers/crio.d" must be inside '
                                                     'agent.configDirectory "/etc/crio"'),
    ("agent.criSocket=run/crio.sock", "at '/agent/criSocket': 'run/crio.sock' does not match pattern '^/'"),
    ("image.digest=sha256:abc", "at '/image/digest': 'sha256:abc' does not match pattern"),
    ("agent.prot=9000", "at '/agent': additional properties 'prot' not allowed"),
])
def test_bad_values_are_refused_by_name(helm, setting, message):
    done = helm("template", "pinsvc", str(CHART), "--set", setting, check=False)
    assert done.returncode == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("args,files", [
    ((), ("agent.yaml", "controller.yaml")),
    (("--set", "coordinator.enabled=true"), ("agent.yaml", "controller.yaml", "coordinator.yaml")),
    (("--set", "coordinator.enabled=true", "--set", "controller.enabled=false"), ("agent.yaml", "coordinator.yaml")),
])
def test_renders_exactly_deploy_kubernetes(helm, args, files):
    """By default the agent and the controller; the coordinator, its alternative, when enabled."""
    rendered = by_key(render(helm, *args))
    expected = by_key(deploy_documents(*files))
    assert sorted(rendered) == sorted(expected)
    for k, document in expected.items():
        assert rendered[k] == document, k


def test_crds_only_when_asked_and_as_deploy_holds_them(helm):
    assert not [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    rendered = by_key([d for d in render(helm, "--set", "crds.install=true") if d["kind"] == "CustomResourceDefinition"])
    expected = by_key([d for p in sorted((DEPLOY / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())])
    assert sorted(rendered) == sorted(expected) and len(expected) == 3
    for k, crd in rendered.items():
        # kept on uninstall: deleting a CRD deletes every object of its kind
        assert crd["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep"
        assert crd == expected[k], k


def test_non_default_values_mean_what_they_say(helm, values_file):
    documents = render(helm, "-f", str(values_file))
    objects = by_key(documents)
    daemonset = objects["DaemonSet", "pin-system", "pinsvc-agent"]
    s = agent_settings(daemonset)
    assert (s.cri_endpoint, s.server.tcp, s.server.metrics, s.log_format) == (
        "unix:///run/crio/crio.sock", "10.0.0.5:9555", "", "text")
    assert (s.reload.strategy, s.otlp_endpoint) == ("none", "http://otel-collector.observability:4317")
    assert s.pull.parallelism == 3
    paths = HostPaths(daemonset)
    assert paths.host_path(s.cri_endpoint.removeprefix("unix://")) == "/run/crio/crio.sock"
    assert paths.mount_of(s.dropin_temp_dir) is paths.mount_of(s.dropin_path)
    assert paths.host_path(s.dropin_path) == "/etc/crio/crio.conf.d/50-pinned-images"
    # no pull secret: no mount, and the agent's default path is then absent (anonymous pulls)
    assert "pull-secret" not in paths.volumes and "--registry-pull-secret" not in " ".join(
        daemonset["spec"]["template"]["spec"]["containers"][0]["args"])
    assert paths.volume_of(s.server.tls_cert)["secret"]["secretName"] == "agents-mtls"

    (controller,) = objects["Deployment", "pin-system", "pinsvc-controller"]["spec"]["template"]["spec"]["containers"]
    args = controller_parser().parse_args(controller["args"])
    assert (args.port, args.tls_server_name, args.otlp_endpoint) == (9555, "agents.pin-system",
                                                                    "http://otel-collector.observability:4317")
    assert objects["Deployment", "pin-system", "pinsvc-controller"]["spec"]["replicas"] == 3
    assert args.http_address == ":9090" and controller["ports"][0]["containerPort"] == 9090
    assert controller["readinessProbe"]["httpGet"]["port"] == controller["ports"][0]["name"]
    assert not [k for k in objects if k[0] in ("CronJob", "Job") or "coordinator" in k[2]]
    assert len([k for k in objects if k[0] == "CustomResourceDefinition"]) == 3

    for document in documents:
        if document["kind"] == "CustomResourceDefinition":
            continue  # OpenShift's, as it ships them
        assert document["metadata"]["labels"]["team"] == "infra", key(document)
        if document["metadata"].get("namespace") not in (None, "pin-system"):
            assert key(document) in {("Role", "default", "pinsvc-controller-events"),
                                     ("RoleBinding", "default", "pinsvc-controller-events")}
    containers = [c for d in documents if d["kind"] in ("DaemonSet", "Deployment")
                  for c in d["spec"]["template"]["spec"]["containers"]]
    assert {(c["image"], c["imagePullPolicy"]) for c in containers} == {
        (f"registry.example.com/infra/pinsvc@{DIGEST}", "Always")}
    assert objects["DaemonSet", "pin-system", "pinsvc-agent"]["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "pinsvc-agent"}}  # labels are not selectors


def test_coordinator_follows_the_agent_port_and_names(helm):
    objects = by_key(render(helm, "--set", "coordinator.enabled=true", "--set", "agent.port=9555",
                            "--set", "tls.serverName=agents.example"))
    for kind, name in (("CronJob", "pinsvc-rollout"), ("Job", "pinsvc-rollout-once")):
        spec = objects[kind, "pinsvc", name]["spec"]
        pod = (spec["jobTemplate"]["spec"] if kind == "CronJob" else spec)["template"]["spec"]
        (container,) = pod["containers"]
        args = pinctl_parser().parse_args(container["command"][1:] + container["args"])
        assert (args.port, args.tls_server_name, args.kube) == (9555, "agents.example", True)


def test_renderings_pass_kubeconform_strict(helm, values_file, schemas, tmp_path):
    for name, args in (("default", ()), ("non-default", ("-f", str(values_file)))):
        # kubeconform has no schema for a CRD's own kind; the CRDs are checked by the API server below
        documents = [d for d in render(helm, *args) if d["kind"] != "CustomResourceDefinition"]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        done = kubeconform(schemas, path)
        report = json.loads(done.stdout)
        assert done.returncode == 0, json.dumps(report["resources"], indent=1) + done.stderr
        assert report["summary"] == {"valid": len(documents), "invalid": 0, "errors": 0, "skipped": 0}


# --- against a real kube-apiserver --------------------------------------------------------

@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    with KubeCluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


def test_server_side_dry_run_of_both_renderings(helm, kube, values_file, tmp_path):
    """The API server's own validation and defaulting (no object is stored); the namespaces
    exist first, as after the chart's Namespace is applied."""
    for name, args, namespace in (("default", (), "pinsvc"), ("non-default", ("-f", str(values_file)), "pin-system")):
        kube.kubectl("create", "namespace", namespace)
        path = tmp_path / f"{name}.yaml"
        path.write_text(helm("template", "pinsvc", str(CHART), *args).stdout)
        done = kube.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", str(path),
                            check=False)
        assert done.returncode == 0, done.stderr
        assert "daemonset.apps/pinsvc-agent serverside-applied (server dry run)" in done.stdout
        kube.kubectl("delete", "namespace", namespace, "--wait=false")


def test_install_upgrade_and_uninstall(helm, kube, values_file):
    """What `helm install` does on a cluster, minus the kubelet: every object created (the
    chart's Namespace first), an upgrade to other values (the coordinator's objects go,
    the agent's change), an uninstall. The CRDs exist already here (the API server's
    fixture installed them), so the upgrade leaves them out: Helm refuses to adopt them."""
    config = ["--kubeconfig", str(kube.kubeconfig)]
    helm("install", "pinsvc", str(CHART), "--namespace", "default", "--set", "namespace.name=pinsvc-helm",
         "--set", "coordinator.enabled=true", *config)
    daemonset = kube.get("daemonset", "-n", "pinsvc-helm", "pinsvc-agent")
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"] == "pinsvc:0.1.0"
    assert kube.get("namespace", "pinsvc-helm")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert kube.get("cronjob", "-n", "pinsvc-helm", "pinsvc-rollout")["spec"]["schedule"] == "*/30 * * * *"
    assert kube.get("deployment", "-n", "pinsvc-helm", "pinsvc-controller")["spec"]["replicas"] == 2

    helm("upgrade", "pinsvc", str(CHART), "--namespace", "default", "-f", str(values_file),
         "--set", "namespace.name=pinsvc-helm", "--set", "crds.install=false", *config)
    daemonset = kube.get("daemonset", "-n", "pinsvc-helm", "pinsvc-agent")
    args = daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cri-endpoint=unix:///run/crio/crio.sock" in args and "--server-tcp=$(HOST_IP):9555" in args
    assert kube.kubectl("get", "cronjob", "-n", "pinsvc-helm", "pinsvc-rollout", check=False).returncode == 1
    assert kube.kubectl("get", "clusterrole", "pinsvc-coordinator", check=False).returncode == 1

    helm("uninstall", "pinsvc", "--namespace", "default", *config)
    assert kube.kubectl("get", "daemonset", "-n", "pinsvc-helm", "pinsvc-agent", check=False).returncode == 1
    assert kube.kubectl("get", "clusterrole", "pinsvc-controller", check=False).returncode == 1
