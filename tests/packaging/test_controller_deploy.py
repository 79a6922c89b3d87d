"""deploy/kubernetes/controller.yaml and crds/: what can be checked without a cluster (the
API server checks are in tests/e2e/controller: `kubectl apply --dry-run=server` and the
controller running with exactly the ServiceAccount's permissions)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from devenv.paths import cache_dir
from pinsvc.controller.cli import parser, settings_from

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER = ROOT / "deploy" / "kubernetes" / "controller.yaml"
CRDS = ROOT / "deploy" / "kubernetes" / "crds"


def find(kind: str, name: str) -> dict:
    return next(d for d in yaml.safe_load_all(CONTROLLER.read_text()) if d["kind"] == kind
                and d["metadata"]["name"] == name)


def test_deployment_runs_two_replicas_with_parseable_arguments():
    deployment = find("Deployment", "pinsvc-controller")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pinsvc-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["pinsvc-controller"]
    args = parser().parse_args(container["args"])
    assert settings_from(args).leadership.lease_name == "pinsvc-controller"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # the probes ask the port the controller serves /healthz and /readyz on (--http-address)
    from pinsvc.metrics import parse_address
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", parse_address(settings_from(args).http_address)[1])
    assert (container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]) == (
        {"path": "/readyz", "port": "http"}, {"path": "/healthz", "port": "http"})


def test_rbac_is_least_privilege():
    rules = find("ClusterRole", "pinsvc-controller")["rules"]
    verbs = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    mco = "machineconfiguration.openshift.io"
    assert verbs == {("", "nodes"): {"get", "list", "watch"},
                     (mco, "pinnedimagesets"): {"get", "list", "watch"},
                     (mco, "machineconfigpools"): {"get", "list", "watch"},
                     (mco, "machineconfignodes"): {"get", "list", "watch", "create", "patch", "delete"},
                     (mco, "machineconfignodes/status"): {"patch"},
                     (mco, "machineconfigpools/status"): {"patch"}}
    lease = find("Role", "pinsvc-controller-lease")
    assert lease["metadata"]["namespace"] == "pinsvc"
    assert [r.get("resourceNames") for r in lease["rules"]] == [None, ["pinsvc-controller"]]
    events = find("Role", "pinsvc-controller-events")
    assert events["metadata"]["namespace"] == "default" and events["rules"][0]["verbs"] == ["create"]


def test_crds_are_the_pinned_openshift_api_ones():
    fetched = cache_dir() / "crds" / "openshift-api"
    if not fetched.is_dir():
        missing = f"no CRDs fetched into {fetched}: run bash scripts/install-peers.sh"
        pytest.fail(missing) if os.environ.get("CI") else pytest.skip(missing)
    shipped = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert shipped == sorted(p.name for p in fetched.glob("*.yaml"))
    for name in shipped:
        assert (CRDS / name).read_bytes() == (fetched / name).read_bytes(), name
