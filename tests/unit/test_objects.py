"""The coordinator's input layer: cluster objects as `oc get -o yaml` prints them, and the
resolution of sets, pools, nodes and agent endpoints over them."""

import dataclasses
import io
import json
import textwrap

import pytest

from pinsvc.coordinator.loader import load
from pinsvc.coordinator.objects import LabelSelector, selects
from pinsvc.coordinator.selection import (
    effective_pools, endpoint, load_endpoint_map, max_unavailable, node_pools, node_sets, pool_nodes,
    pool_sets, primary_pool, skip_reason,
)
from pinsvc.errors import InvalidArgument

IMAGE_A = "quay.io/openshift-release-dev/ocp-release@sha256:513cf1028aa1a021fa73d0601427a0fbcf6d212b88aaf9d76d4e4841a061e44e"
IMAGE_B = "quay.io/openshift-release-dev/ocp-release@sha256:61eae2d261e54d1b8a0e05f6b5326228b00468364563745eed88460af04f909b"

# The documentation's examples, copied as written (../shared/facts/pinnedimageset-example.md).
DOCUMENTED_SET = """\
apiVersion: machineconfiguration.openshift.io/v1
kind: PinnedImageSet
metadata:
  labels:
    machineconfiguration.openshift.io/role: worker
  name: worker-pinned-images
spec:
  pinnedImages:
  - name: quay.io/openshift-release-dev/ocp-release@sha256:513cf1028aa1a021fa73d0601427a0fbcf6d212b88aaf9d76d4e4841a061e44e
  - name: quay.io/openshift-release-dev/ocp-release@sha256:61eae2d261e54d1b8a0e05f6b5326228b00468364563745eed88460af04f909b
"""
DOCUMENTED_SET_V1ALPHA1 = """\
apiVersion: machineconfiguration.openshift.io/v1alpha1
kind: PinnedImageSet
metadata:
  labels:
    machineconfiguration.openshift.io/role: worker
  name: worker-pinned-images
spec:
  pinnedImages:
  - name: quay.io/openshift-release-dev/ocp-release@sha256:513cf1028aa1a021fa73d0601427a0fbcf6d212b88aaf9d76d4e4841a061e44e
  - name: quay.io/openshift-release-dev/ocp-release@sha256:61eae2d261e54d1b8a0e05f6b5326228b00468364563745eed88460af04f909b
"""
DOCUMENTED_WORKER_POOL = """\
apiVersion: machineconfiguration.openshift.io/v1
kind: MachineConfigPool
metadata:
  name: worker
spec:
  machineConfigSelector:
    matchLabels:
      machineconfiguration.openshift.io/role: worker
  nodeSelector:
    matchLabels:
      node-role.kubernetes.io/worker: ""
  maxUnavailable: 1
  pinnedImageSets:
  - name: worker-pinned-images
"""
DOCUMENTED_INFRA_POOL = """\
apiVersion: machineconfiguration.openshift.io/v1
kind: MachineConfigPool
metadata:
  name: infra
spec:
  machineConfigSelector:
    matchExpressions:
    - key: machineconfiguration.openshift.io/role
      operator: In
      values: [worker, infra]
  nodeSelector:
    matchLabels:
      node-role.kubernetes.io/infra: ""
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text) if isinstance(text, str) else json.dumps(text))
    return path


def node(name, labels=None, *, ip="10.0.0.1", ready="True", disk_pressure="False", annotations=None):
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if disk_pressure is not None:
        conditions.append({"type": "DiskPressure", "status": disk_pressure})
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "reason": "KubeletReady"})
    addresses = [{"type": "Hostname", "address": name}] + ([{"type": "InternalIP", "address": ip}] if ip else [])
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "status": {"addresses": addresses, "conditions": conditions}}


def pinned_set(name, images=(IMAGE_A,), labels=None, **metadata):
    return {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
            "metadata": {"name": name, **({"labels": labels} if labels is not None else {}), **metadata},
            "spec": {"pinnedImages": [{"name": i} for i in images]}}


def pool(name, node_labels=None, config_labels=None, *, config_selector=None, sets=(), **spec):
    body = {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
            "metadata": {"name": name}, "spec": dict(spec)}
    if node_labels is not None:
        body["spec"]["nodeSelector"] = {"matchLabels": node_labels}
    if config_selector is not None or config_labels is not None:
        body["spec"]["machineConfigSelector"] = config_selector or {"matchLabels": config_labels}
    if sets:
        body["spec"]["pinnedImageSets"] = [{"name": s} for s in sets]
    return body


def load_objects(tmp_path, *objects, name="cluster.json"):
    return load([write(tmp_path, name, {"apiVersion": "v1", "kind": "List", "items": list(objects)})])


def problems_of(sources):
    with pytest.raises(InvalidArgument) as e:
        load(sources)
    return e.value.problems


@pytest.mark.parametrize("set_yaml, api_version", [(DOCUMENTED_SET, "v1"), (DOCUMENTED_SET_V1ALPHA1, "v1alpha1")])
def test_the_documented_examples_load_as_written(tmp_path, set_yaml, api_version):
    assert f"machineconfiguration.openshift.io/{api_version}\n" in set_yaml
    cluster = load([write(tmp_path, "set.yaml", set_yaml), write(tmp_path, "worker.yaml", DOCUMENTED_WORKER_POOL),
                    write(tmp_path, "infra.yaml", DOCUMENTED_INFRA_POOL)])

    image_set = cluster.sets["worker-pinned-images"]
    assert (image_set.generation, image_set.uid, image_set.images) == (None, "", (IMAGE_A, IMAGE_B)), \
        "no metadata.generation: derived per node (coordinator.content)"
    assert image_set.labels == {"machineconfiguration.openshift.io/role": "worker"}
    assert image_set.source == str(tmp_path / "set.yaml")
    worker, infra = cluster.pools["worker"], cluster.pools["infra"]
    assert worker.node_selector == LabelSelector({"node-role.kubernetes.io/worker": ""})
    assert (worker.pinned_image_sets, worker.max_unavailable, worker.paused) == (("worker-pinned-images",), 1, False)
    assert [(r.key, r.operator, r.values) for r in infra.machine_config_selector.match_expressions] == [
        ("machineconfiguration.openshift.io/role", "In", ("worker", "infra"))]
    assert (infra.pinned_image_sets, infra.max_unavailable) == ((), 1)
    # attached to worker by its labels and its explicit list, to infra by the In expression
    assert [s.name for s in pool_sets(cluster, worker)] == ["worker-pinned-images"]
    assert [s.name for s in pool_sets(cluster, infra)] == ["worker-pinned-images"]
    assert list(cluster.pools) == ["worker", "infra"] and cluster.nodes == {}


def test_lists_multi_document_streams_and_json_load_together_ignoring_oc_fields(tmp_path):
    stream = write(tmp_path, "stream.yaml", f"""\
        ---
        apiVersion: machineconfiguration.openshift.io/v1
        kind: PinnedImageSet
        metadata:
          name: second
          generation: 4
          uid: 7d3b2c1e-0000-4000-8000-000000000001
          resourceVersion: "123456"
          creationTimestamp: "2024-05-01T10:00:00Z"
          managedFields:
          - manager: oc
            operation: Update
        spec:
          pinnedImages:
          - name: {IMAGE_B}
        ---
        apiVersion: machineconfiguration.openshift.io/v1
        kind: MachineConfigPool
        metadata:
          name: worker
        spec:
          nodeSelector:
            matchLabels:
              node-role.kubernetes.io/worker: ""
          maxUnavailable: 25%
          paused: true
        status:
          machineCount: 3
        ---
        """)
    listing = write(tmp_path, "list.yaml", {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
                                            "items": [pinned_set("first"), node("w0", {"node-role.kubernetes.io/worker": ""})]})
    # `oc get nodes -o json` through the API: a NodeList, its items without kind, tab-indented
    typed = tmp_path / "nodes.json"
    typed.write_text(json.dumps({"apiVersion": "v1", "kind": "NodeList", "items": [
        {k: v for k, v in node("w1", ip="fd00::21").items() if k not in ("kind", "apiVersion")}]}, indent="\t"))

    cluster = load([listing, stream, typed])

    assert list(cluster.sets) == ["first", "second"] and list(cluster.nodes) == ["w0", "w1"]
    second = cluster.sets["second"]
    assert (second.generation, second.uid, second.images) == (4, "7d3b2c1e-0000-4000-8000-000000000001", (IMAGE_B,))
    assert second.source == f"{stream} (document 1)"
    assert cluster.sets["first"].source == f"{listing} (items[0])"
    assert cluster.nodes["w1"].internal_ip == "fd00::21" and cluster.nodes["w1"].source == f"{typed} (items[0])"
    worker = cluster.pools["worker"]
    assert (worker.max_unavailable, worker.paused, worker.source) == ("25%", True, f"{stream} (document 2)")


def test_stdin_is_read_for_a_dash(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(DOCUMENTED_SET))
    cluster = load(["-"])
    assert cluster.sets["worker-pinned-images"].source == "<stdin>"


def test_node_fields_come_from_metadata_and_status(tmp_path):
    body = node("w0", {"node-role.kubernetes.io/worker": ""}, ip="10.0.0.7", annotations={"a": "b"})
    body["status"]["addresses"].append({"type": "InternalIP", "address": "fd00::7"})
    body["status"]["addresses"].insert(0, {"type": "ExternalIP", "address": "203.0.113.7"})
    w0 = load_objects(tmp_path, body).nodes["w0"]
    assert (w0.labels, w0.annotations, w0.internal_ip, w0.ready, w0.disk_pressure) == (
        {"node-role.kubernetes.io/worker": ""}, {"a": "b"}, "10.0.0.7", True, False)


def test_unknown_kinds_are_noted_and_skipped(tmp_path):
    dump = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p2"}},
        {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigNode", "metadata": {"name": "w0"}},
        pinned_set("kept")]}
    path = write(tmp_path, "dump.json", dump)
    cluster = load([path])
    assert list(cluster.sets) == ["kept"]
    assert (f"{path}: skipped 4 object(s) of kinds pinsvc does not use: ConfigMap (1), MachineConfigNode (1), "
            f"Pod (2)") in cluster.notes


def _selector(tmp_path, spec):
    return load_objects(tmp_path, pool("p", node_labels={}) | {"spec": {"nodeSelector": spec}}).pools["p"].node_selector


@pytest.mark.parametrize("spec, labels, expected", [
    ({}, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {}}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchLabels": {"a": ""}}, {"a": ""}, True),
    ({"matchLabels": {"a": ""}}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "3"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1", "b": ""}, True),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_label_selectors_follow_kubernetes_semantics(tmp_path, spec, labels, expected):
    selector = _selector(tmp_path, spec)
    assert selector.matches(labels) is expected and selects(selector, labels) is expected


def test_a_missing_selector_matches_nothing(tmp_path):
    assert _selector(tmp_path, None) is None
    assert not selects(None, {}) and not selects(None, {"a": "1"})


ROLE = "machineconfiguration.openshift.io/role"


def test_sets_attach_by_labels_by_explicit_list_and_unlabeled_sets_go_everywhere(tmp_path):
    cluster = load_objects(
        tmp_path,
        pinned_set("worker-set", labels={ROLE: "worker"}), pinned_set("infra-set", labels={ROLE: "infra"}),
        pinned_set("gpu-set", labels={ROLE: "gpu"}), pinned_set("everywhere"),
        pinned_set("extra", labels={"team": "ml"}),
        pool("worker", {"w": ""}, {ROLE: "worker"}),
        pool("infra", {"i": ""}, config_selector={"matchExpressions": [
            {"key": ROLE, "operator": "In", "values": ["worker", "infra"]}]}),
        pool("gpu", {"g": ""}, {ROLE: "gpu"}, sets=["extra"]),
        pool("empty-selector", {"e": ""}, config_selector={}),
        pool("no-selector", {"n": ""}))

    def names(pool_name):
        return [s.name for s in pool_sets(cluster, cluster.pools[pool_name])]
    assert names("worker") == ["everywhere", "worker-set"]
    assert names("infra") == ["everywhere", "infra-set", "worker-set"]
    assert names("gpu") == ["everywhere", "extra", "gpu-set"]
    # MCO attaches nothing by label through a nil or empty machineConfigSelector
    assert names("empty-selector") == ["everywhere"] and names("no-selector") == ["everywhere"]


def test_a_node_gets_the_union_of_its_pools_and_its_custom_pool_rolls_it_out(tmp_path):
    worker_label, infra_label, master_label = ({f"node-role.kubernetes.io/{r}": ""} for r in ("worker", "infra", "master"))
    cluster = load_objects(
        tmp_path,
        pinned_set("worker-set", labels={ROLE: "worker"}), pinned_set("infra-only", labels={ROLE: "infra"}),
        pinned_set("master-set", labels={ROLE: "master"}), pinned_set("listed", labels={"x": "y"}),
        pool("master", master_label, {ROLE: "master"}),
        pool("worker", worker_label, {ROLE: "worker"}),
        pool("infra", infra_label, {ROLE: "infra"}, sets=["listed"]),
        node("w1", worker_label), node("i1", worker_label | infra_label), node("i2", infra_label),
        node("m1", master_label | worker_label), node("lonely", {"other": "x"}))
    n = cluster.nodes

    assert [p.name for p in node_pools(cluster, n["i1"])] == ["worker", "infra"]
    assert [p.name for p in effective_pools(cluster, n["i1"])] == ["infra", "worker"]
    assert primary_pool(cluster, n["i1"]).name == "infra"
    assert [s.name for s in node_sets(cluster, n["i1"])] == ["infra-only", "listed", "worker-set"]
    assert primary_pool(cluster, n["i2"]).name == "infra"  # a custom pool alone: no worker sets
    assert [s.name for s in node_sets(cluster, n["i2"])] == ["infra-only", "listed"]
    assert primary_pool(cluster, n["w1"]).name == "worker"
    assert [s.name for s in node_sets(cluster, n["w1"])] == ["worker-set"]
    # master+worker (compact clusters) lives under master only, as in MCO
    assert [p.name for p in effective_pools(cluster, n["m1"])] == ["master"]
    assert [s.name for s in node_sets(cluster, n["m1"])] == ["master-set"]
    assert primary_pool(cluster, n["lonely"]) is None and node_sets(cluster, n["lonely"]) == []
    assert [x.name for x in pool_nodes(cluster, cluster.pools["infra"])] == ["i1", "i2"]
    assert [x.name for x in pool_nodes(cluster, cluster.pools["worker"])] == ["w1"]
    assert "1 node(s) are in no MachineConfigPool, nothing is pinned there: lonely" in cluster.notes


def test_an_empty_node_selector_selects_no_node_as_in_openshift(tmp_path):
    cluster = load_objects(tmp_path, pool("everything", {}), pool("nothing"), node("w0", {"a": "b"}))
    assert node_pools(cluster, cluster.nodes["w0"]) == []
    assert sum("selects no node" in note for note in cluster.notes) == 2


def test_a_node_in_master_and_a_custom_pool_follows_master_with_a_note(tmp_path):
    cluster = load_objects(tmp_path, pool("master", {"m": ""}), pool("infra", {"i": ""}), node("n", {"m": "", "i": ""}))
    assert primary_pool(cluster, cluster.nodes["n"]).name == "master"
    assert any("Node/n is in pools master and infra: it follows master" in note for note in cluster.notes)


@pytest.mark.parametrize("ready, disk_pressure, reason", [
    ("True", "False", None), ("True", None, None), ("False", "False", "NotReady"), ("Unknown", "False", "NotReady"),
    (None, "False", "NotReady"), ("True", "True", "DiskPressure"), ("False", "True", "NotReady"),
])
def test_skip_reasons(tmp_path, ready, disk_pressure, reason):
    cluster = load_objects(tmp_path, node("n", ready=ready, disk_pressure=disk_pressure))
    assert skip_reason(cluster.nodes["n"]) == reason


@pytest.mark.parametrize("value, count, expected", [
    (None, 10, 1), (3, 10, 3), (0, 10, 1), ("10%", 25, 2), ("10%", 5, 1), ("100%", 7, 7), ("0%", 5, 1), ("50%", 0, 1),
])
def test_max_unavailable(tmp_path, value, count, expected):
    spec = {} if value is None else {"maxUnavailable": value}
    cluster = load_objects(tmp_path, pool("p", {"a": ""}, **spec))
    assert max_unavailable(cluster.pools["p"], count) == expected


def test_endpoint_precedence_map_then_annotation_then_internal_ip(tmp_path):
    key = "pinsvc.io/agent-endpoint"
    cluster = load_objects(tmp_path, node("a", annotations={key: "agent-a.example:7000"}), node("b", ip="10.1.0.2"),
                           node("c", ip="fd00::3"), node("d", annotations={key: "/run/pinsvc/d.sock"}),
                           node("e", annotations={"other/key": "unix:///run/e.sock"}))
    a, b, c, d, e = cluster.nodes.values()
    assert endpoint(a, port=9440, overrides={"a": "unix:///tmp/a.sock"}) == "unix:///tmp/a.sock"
    assert endpoint(a, port=9440, overrides={"b": "10.9.9.9:1"}) == "agent-a.example:7000"
    assert endpoint(b, port=9440) == "10.1.0.2:9440"
    assert endpoint(c, port=9440) == "[fd00::3]:9440"
    assert endpoint(d, port=9440) == "unix:///run/pinsvc/d.sock"
    assert endpoint(e, port=1, annotation="other/key") == "unix:///run/e.sock"
    assert endpoint(b, port=9440, overrides={"b": "[fd00::9]:9441"}) == "[fd00::9]:9441"


def test_endpoint_errors_name_the_node(tmp_path):
    key = "pinsvc.io/agent-endpoint"
    cluster = load_objects(tmp_path, node("none", ip=None), node("bad", annotations={key: "fd00::1:9440"}))
    with pytest.raises(InvalidArgument, match=r"Node/none: no agent endpoint: not in the endpoint map, no "
                                              r"pinsvc.io/agent-endpoint annotation and no InternalIP"):
        endpoint(cluster.nodes["none"], port=9440)
    with pytest.raises(InvalidArgument, match=r"Node/bad: annotation pinsvc.io/agent-endpoint: .*in brackets"):
        endpoint(cluster.nodes["bad"], port=9440)
    with pytest.raises(InvalidArgument, match=r"Node/none: the endpoint map: .*absolute path"):
        endpoint(cluster.nodes["none"], port=9440, overrides={"none": "unix://relative.sock"})


def test_endpoint_map_files(tmp_path):
    good = write(tmp_path, "endpoints.yaml", """\
        worker-0: 10.0.0.5:9440
        worker-1: "[fd00::6]:9440"
        local: unix:///run/pinsvc/pinsvc.sock
        other: /run/pinsvc/other.sock
        """)
    assert load_endpoint_map(good) == {"worker-0": "10.0.0.5:9440", "worker-1": "[fd00::6]:9440",
                                       "local": "unix:///run/pinsvc/pinsvc.sock", "other": "/run/pinsvc/other.sock"}
    assert load_endpoint_map(write(tmp_path, "e.json", {"n": "h.example:1"})) == {"n": "h.example:1"}
    bad = write(tmp_path, "bad.yaml", {"a": "host", "b": "h:70000", "c": 9440, "d": "ok.example:1"})
    with pytest.raises(InvalidArgument) as e:
        load_endpoint_map(bad)
    assert [p.split(": ", 2)[1] for p in e.value.problems] == ["node a", "node b", "node c"]
    assert "port 70000 is not in 1-65535" in e.value.problems[1] and str(bad) in e.value.problems[0]
    with pytest.raises(InvalidArgument, match="want one mapping of node name to endpoint"):
        load_endpoint_map(write(tmp_path, "list.yaml", "- a\n- b\n"))


def test_every_problem_is_reported_at_once_with_file_and_object(tmp_path):
    huge = [f"quay.io/x@sha256:{i:064x}" for i in range(501)]
    bad = write(tmp_path, "bad.yaml", "\n---\n".join(json.dumps(o) for o in [
        pinned_set("wrong-api") | {"apiVersion": "machineconfiguration.openshift.io/v2"},       # 1
        {k: v for k, v in pool("no-api", {"a": ""}).items() if k != "apiVersion"},              # 2
        pinned_set("x") | {"metadata": {"labels": {"a": "b"}}},                                 # 3
        pinned_set("empty", images=()),                                                         # 4
        pinned_set("huge", images=huge),                                                        # 5
        pinned_set("bad-refs", images=["quay.io/app:latest", "quay.io/app@sha256:abc", IMAGE_A, IMAGE_A]),  # 6
        pinned_set("Bad_Name"),                                                                 # 7
        pinned_set("gen-zero", generation=0),                                                   # 8
        pool("dangling", {"a": ""}, sets=["missing-set"]),                                      # 9
        pool("bad-selectors", config_selector={ROLE: "worker"}) | {"spec": {                    # 10
            "machineConfigSelector": {ROLE: "worker"},
            "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]},
                                                  {"key": "b", "operator": "In"}]}}},
        pool("mu-abc", {"a": ""}, maxUnavailable="abc"),                                        # 11
        pool("mu-150", {"a": ""}, maxUnavailable="150%"),                                       # 12
        pool("mu-neg", {"a": ""}, maxUnavailable=-1),                                           # 13
        node("n1", {"tier": 1}),                                                                # 14
        {"apiVersion": "v1", "metadata": {"name": "kindless"}},                                 # 15
        pool("gpu-a", {"gpu": "yes"}), pool("gpu-b", {"gpu": "yes"}), node("n2", {"gpu": "yes"}),  # 16-18
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},             # 19
    ]))
    other = write(tmp_path, "other.yaml", {"apiVersion": "v1", "kind": "List", "items": [
        node("n2", {"gpu": "yes"}), pinned_set("fine")]})
    broken = write(tmp_path, "broken.yaml", "kind: Node\nmetadata: [\n")

    problems = problems_of([bad, other, broken, tmp_path / "absent.yaml"])

    doc = f"{bad} (document {{}})".format
    expected = [
        f"{doc(1)}: PinnedImageSet/wrong-api: apiVersion 'machineconfiguration.openshift.io/v2' is not "
        f"machineconfiguration.openshift.io/v1 or machineconfiguration.openshift.io/v1alpha1",
        f"{doc(2)}: MachineConfigPool/no-api: missing apiVersion, want machineconfiguration.openshift.io/v1",
        f"{doc(3)}: PinnedImageSet/<no name>: missing metadata.name",
        f"{doc(4)}: PinnedImageSet/empty: has no images: spec.pinnedImages needs 1 to 500 entries",
        f"{doc(5)}: PinnedImageSet/huge: has 501 images in spec.pinnedImages (at most 500)",
        f"{doc(6)}: PinnedImageSet/bad-refs: spec.pinnedImages[0].name: image reference 'quay.io/app:latest' "
        f"uses tag 'latest': only digest references (@sha256:...) can be pinned",
        f"{doc(6)}: PinnedImageSet/bad-refs: spec.pinnedImages[1].name: image reference 'quay.io/app@sha256:abc' "
        f"has a malformed sha256 digest",
        f"{doc(6)}: PinnedImageSet/bad-refs: spec.pinnedImages[3].name repeats spec.pinnedImages[2].name: {IMAGE_A}",
        f"{doc(7)}: PinnedImageSet/Bad_Name: set name 'Bad_Name' is not an RFC 1123 subdomain",
        f"{doc(8)}: PinnedImageSet/gen-zero: metadata.generation is 0: generations start at 1",
        f"{doc(10)}: MachineConfigPool/bad-selectors: spec.nodeSelector.matchExpressions[0].operator 'Equals' is "
        f"not one of In, NotIn, Exists, DoesNotExist",
        f"{doc(10)}: MachineConfigPool/bad-selectors: spec.nodeSelector.matchExpressions[1]: operator In needs "
        f"at least one value",
        f"{doc(10)}: MachineConfigPool/bad-selectors: spec.machineConfigSelector: unknown field "
        f"'{ROLE}' (a label selector has matchLabels and matchExpressions",
        f"{doc(11)}: MachineConfigPool/mu-abc: spec.maxUnavailable 'abc': want an integer >= 0 or a percentage",
        f"{doc(12)}: MachineConfigPool/mu-150: spec.maxUnavailable '150%': want an integer >= 0 or a percentage",
        f"{doc(13)}: MachineConfigPool/mu-neg: spec.maxUnavailable is -1: want an integer >= 0 or a percentage",
        f"{doc(14)}: Node/n1: metadata.labels: 'tier': 1 is not a string",
        f"{doc(15)}: not a Kubernetes object (no kind)",
        f"{other} (items[0]): Node/n2: defined more than once: first in {doc(18)}",
        f"{broken}: not valid YAML or JSON at line 3, column 1",
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory",
        f"{doc(9)}: MachineConfigPool/dangling: spec.pinnedImageSets[0] names PinnedImageSet/missing-set, "
        f"which is not in the input",
        f"{doc(18)}: Node/n2: is in 2 custom pools (gpu-a, gpu-b); OpenShift refuses such a node",
    ]
    for want in expected:
        assert sum(p.startswith(want) for p in problems) == 1, f"{want!r} not reported once in:\n" + "\n".join(problems)
    assert len(problems) == len(expected), "\n".join(problems)


def test_load_raises_a_single_invalid_argument_before_returning_anything(tmp_path):
    good = write(tmp_path, "good.yaml", DOCUMENTED_SET)
    bad = write(tmp_path, "bad.yaml", DOCUMENTED_WORKER_POOL.replace("worker-pinned-images", "nope"))
    with pytest.raises(InvalidArgument) as e:
        load([good, bad])
    assert e.value.problems == [f"{bad}: MachineConfigPool/worker: spec.pinnedImageSets[0] names "
                                f"PinnedImageSet/nope, which is not in the input"]
    assert str(e.value) == e.value.problems[0]


def test_model_objects_are_frozen(tmp_path):
    image_set = load([write(tmp_path, "s.yaml", DOCUMENTED_SET)]).sets["worker-pinned-images"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        image_set.generation = 2


def test_parse_object_reads_one_object_without_checks_across_objects():
    """The controller's view: a pool naming a set that is not there is not a problem of the
    pool; a bad object comes back as None with its problems, naming it."""
    from pinsvc.coordinator.loader import parse_object

    pool = {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
            "metadata": {"name": "worker"},
            "spec": {"nodeSelector": {"matchLabels": {"node-role.kubernetes.io/worker": ""}},
                     "pinnedImageSets": [{"name": "absent"}], "maxUnavailable": "50%"}}
    model, problems = parse_object("api", pool)
    assert problems == [] and model.name == "worker" and model.pinned_image_sets == ("absent",)
    assert model.max_unavailable == "50%"

    bad = {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
           "metadata": {"name": "s", "generation": 2}, "spec": {"pinnedImages": [{"name": "quay.io/x:latest"}]}}
    model, problems = parse_object("api", bad)
    assert model is None and len(problems) == 1 and "PinnedImageSet/s" in problems[0], problems

    assert parse_object("api", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}) == (None, [])
