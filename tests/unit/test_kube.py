"""Kubernetes mode of pinctl (`pinsvc.coordinator.kube`) with the real `kubernetes` client.

The API server here is a STAND-IN: a small HTTP server on loopback that serves the three
list endpoints the coordinator reads (nodes, machineconfigpools, pinnedimagesets) with
the JSON a real API server returns (typed lists, paging with limit/continue, Status
errors). What is tested is the real client's requests (paths, query, bearer token, kubeconfig
and context handling) and its decoding, then the same validation as files. Kubernetes mode
is not tested against a live cluster here (there is none on this machine).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from pinsvc.coordinator import kube, loader, objects
from pinsvc.errors import InvalidArgument
from tests.kube_standin import MCO, TOKEN, StandIn, kubeconfig

DIGEST = "@sha256:" + "ab" * 32


def _node(name: str, role: str, ip: str, ready: str = "True") -> dict:
    return {"metadata": {"name": name, "labels": {f"node-role.kubernetes.io/{role}": ""},
                         "annotations": {"pinsvc.io/agent-endpoint": f"unix:///tmp/absent-{name}.sock"},
                         "creationTimestamp": "2026-11-01T10:00:00Z", "resourceVersion": "7"},
            "spec": {"podCIDR": "10.128.0.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
                                       "lastHeartbeatTime": "2026-11-26T10:00:00Z",
                                       "lastTransitionTime": "2026-11-01T10:00:00Z"},
                                      {"type": "DiskPressure", "status": "False"}]}}


def _pool(name: str, role: str, sets: list[str]) -> dict:
    return {"apiVersion": f"{MCO}/v1", "kind": "MachineConfigPool",
            "metadata": {"name": name, "generation": 3},
            "spec": {"machineConfigSelector": {"matchLabels": {"machineconfiguration.openshift.io/role": role}},
                     "nodeSelector": {"matchLabels": {f"node-role.kubernetes.io/{role}": ""}},
                     "maxUnavailable": 1, "pinnedImageSets": [{"name": s} for s in sets]},
            "status": {"machineCount": 2}}


def _set(name: str, version: str, role: str, images: list[str]) -> dict:
    return {"apiVersion": f"{MCO}/{version}", "kind": "PinnedImageSet",
            "metadata": {"name": name, "generation": 2, "uid": f"uid-{name}",
                         "labels": {"machineconfiguration.openshift.io/role": role}},
            "spec": {"pinnedImages": [{"name": i} for i in images]}}


NODES = [_node("worker-0", "worker", "10.0.0.10"), _node("worker-1", "worker", "10.0.0.11", ready="False"),
         _node("infra-0", "infra", "10.0.0.20"), _node("master-0", "master", "10.0.0.1")]
POOLS = [_pool("worker", "worker", ["worker-images"]), _pool("infra", "infra", []),
         _pool("master", "master", [])]
SETS = [_set("worker-images", "v1", "worker", [f"registry.example/app{i}{DIGEST}" for i in range(3)]),
        _set("infra-images", "v1", "infra", [f"registry.example/infra{DIGEST}"])]


@pytest.fixture
def stand_in():
    server = StandIn(NODES, POOLS, SETS)
    yield server
    server.close()


def _without_source(cluster: objects.Cluster) -> dict:
    return {bucket: {name: dataclasses.replace(model, source="") for name, model in getattr(cluster, bucket).items()}
            for bucket in ("sets", "pools", "nodes")}


def test_reads_the_same_cluster_as_the_files_oc_prints(stand_in, tmp_path, monkeypatch):
    monkeypatch.setattr(kube, "PAGE_SIZE", 3)  # 4 nodes: two pages
    config = kubeconfig(tmp_path / "kubeconfig", stand_in.url)
    from_api = kube.load(kube.KubeSource(str(config)))
    # `oc get nodes,mcp,pinnedimagesets -o yaml`: one List whose items carry kind and apiVersion
    dump = tmp_path / "cluster.yaml"
    dump.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items":
                                    [{"apiVersion": "v1", "kind": "Node", **n} for n in NODES] + POOLS + SETS}))
    from_files = loader.load([dump])
    assert _without_source(from_api) == _without_source(from_files)
    assert list(from_api.nodes) == ["worker-0", "worker-1", "infra-0", "master-0"]
    assert from_api.nodes["worker-1"].ready is False and from_api.nodes["infra-0"].internal_ip == "10.0.0.20"
    assert from_api.sets["worker-images"].images == tuple(f"registry.example/app{i}{DIGEST}" for i in range(3))
    assert from_api.pools["worker"].pinned_image_sets == ("worker-images",)
    assert from_api.nodes["worker-0"].source == f"{stand_in.url} nodes (items[0])"
    # what the real client sent: the list paths, paging, the kubeconfig's bearer token
    nodes = [(q.get("limit"), q.get("continue")) for p, q, _ in stand_in.requests if p == "/api/v1/nodes"]
    assert nodes == [("3", None), ("3", "3")]
    assert {p for p, _, _ in stand_in.requests} == set(stand_in.items)
    assert {auth for _, _, auth in stand_in.requests} == {f"Bearer {TOKEN}"}


def test_context_is_chosen_by_flag(stand_in, tmp_path):
    config = kubeconfig(tmp_path / "kubeconfig", stand_in.url, current="nowhere")
    with pytest.raises(kube.KubeError, match=r"cannot list nodes from http://127.0.0.1:9: "):
        kube.load(kube.KubeSource(str(config)))
    assert set(kube.load(kube.KubeSource(str(config), "stand-in")).pools) == {"worker", "infra", "master"}
    with pytest.raises(InvalidArgument, match=r"context 'absent'"):
        kube.load(kube.KubeSource(str(config), "absent"))


def test_older_clusters_serve_pinnedimagesets_as_v1alpha1(stand_in, tmp_path):
    v1 = stand_in.items.pop(f"/apis/{MCO}/v1/pinnedimagesets")
    alpha = [dict(s, apiVersion=f"{MCO}/v1alpha1") for s in v1[2]]
    stand_in.items[f"/apis/{MCO}/v1alpha1/pinnedimagesets"] = (f"{MCO}/v1alpha1", "PinnedImageSetList", alpha)
    cluster = kube.load(kube.KubeSource(str(kubeconfig(tmp_path / "kc", stand_in.url))))
    assert set(cluster.sets) == {"worker-images", "infra-images"}
    paths = [p for p, _, _ in stand_in.requests]
    assert paths.index(f"/apis/{MCO}/v1/pinnedimagesets") < paths.index(f"/apis/{MCO}/v1alpha1/pinnedimagesets")


def test_forbidden_names_the_resource_and_the_role(stand_in, tmp_path):
    stand_in.errors[f"/apis/{MCO}/v1/machineconfigpools"] = 403
    with pytest.raises(kube.KubeError) as e:
        kube.load(kube.KubeSource(str(kubeconfig(tmp_path / "kc", stand_in.url))))
    assert str(e.value) == (f"cannot list machineconfigpools.{MCO} from {stand_in.url}: HTTP 403 Forbidden: "
                            f"the account may not list machineconfigpools.{MCO}: it needs get/list on them "
                            f"(see deploy/kubernetes/coordinator.yaml)")
    assert TOKEN not in str(e.value)


def test_bad_objects_are_reported_like_bad_files(stand_in, tmp_path):
    broken = dict(SETS[0], spec={"pinnedImages": [{"name": "registry.example/app:latest"}]})
    stand_in.items[f"/apis/{MCO}/v1/pinnedimagesets"] = (f"{MCO}/v1", "PinnedImageSetList", [broken])
    with pytest.raises(InvalidArgument) as e:
        kube.load(kube.KubeSource(str(kubeconfig(tmp_path / "kc", stand_in.url))))
    problems = "\n".join(e.value.problems)
    assert f"{stand_in.url} pinnedimagesets (items[0]): PinnedImageSet/worker-images: spec.pinnedImages[0]" in problems


def test_missing_kubeconfig_is_named(tmp_path):
    with pytest.raises(InvalidArgument, match=rf"--kubeconfig {tmp_path}/absent: no such file"):
        kube.load(kube.KubeSource(str(tmp_path / "absent")))


def test_pinctl_plan_in_kube_mode(stand_in, tmp_path):
    """The whole command: objects from the stand-in, then the usual plan (the agents named by
    the nodes' annotations do not exist, so every target node is Unavailable)."""
    config = kubeconfig(tmp_path / "kubeconfig", stand_in.url)
    done = subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", "plan", "--kube", "--kubeconfig",
                           str(config), "-o", "json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    plan = json.loads(done.stdout)
    assert {p["name"]: [n["node"] for n in p["nodes"]] for p in plan["pools"]} == {
        "worker": ["worker-0", "worker-1"], "infra": ["infra-0"], "master": ["master-0"]}


def test_without_the_kubernetes_package_the_error_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['kubernetes'] = None\n"
            "from pinsvc.coordinator import cli\n"
            f"sys.exit(cli.main(['plan', '--kube', '--kubeconfig', {str(tmp_path / 'kc')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Kubernetes mode needs the `kubernetes` package: pip install 'pinsvc[kube]'" in done.stderr
