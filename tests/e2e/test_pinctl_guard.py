"""A wrong file never unpins a node (issue 18, item 1), against real agents and CRI-O: an
input that yields no PinnedImageSet for a node (a ConfigMap, an empty file, sets whose
labels select no pool, an empty list for `pinsvc apply`) is refused and every pin stays, as
crictl shows; only `--prune-all` unpins everything, and it says what it removes."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from devenv import cluster as objects
from tests.e2e.cluster import items, synchronizer

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pinned", "namespace": "default"},
             "data": {"images": "quay.io/app@sha256:" + "a" * 64}}


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, input=stdin)


def pinned_everywhere(cluster) -> dict[str, set[str]]:
    return {name: crio.pinned_images() for name, crio in cluster.crios.items()}


def rolled_out(cluster) -> dict[str, set[str]]:
    code, _, err = cluster.pinctl("rollout")
    assert code == 0, err
    pins = pinned_everywhere(cluster)
    assert all(pins.values())
    return pins


def test_node_apply_of_a_file_without_sets_is_refused_and_unpins_nothing(cluster):
    before = rolled_out(cluster)
    agent = cluster.agents["n1"].endpoint
    configmap, empty = cluster.workdir / "cm.yaml", cluster.workdir / "empty.yaml"
    configmap.write_text(yaml.safe_dump(CONFIGMAP))
    empty.write_text("")
    for path in (configmap, empty):
        proc = run("pinsvc.coordinator.cli", "node", "apply", "--endpoint", agent, "-f", str(path))
        assert proc.returncode == 2, proc.stderr
        assert "no PinnedImageSet" in proc.stderr and "--prune-all" in proc.stderr, proc.stderr
        assert str(path) in proc.stderr
    assert "ConfigMap" in run("pinsvc.coordinator.cli", "node", "apply", "--endpoint", agent,
                              "-f", str(configmap)).stderr, "it says what it skipped"
    assert pinned_everywhere(cluster) == before


def test_a_rollout_whose_sets_select_no_node_is_refused_and_unpins_nothing(cluster):
    before = rolled_out(cluster)
    docs = list(yaml.safe_load_all(cluster.file.read_text()))
    for doc in docs:
        if doc["kind"] == "PinnedImageSet":
            doc["metadata"]["labels"] = {objects.ROLE_LABEL: "wroker"}  # a typo: no pool takes it
    cluster.file.write_text(objects.render(docs))
    code, doc, err = cluster.pinctl("rollout", "--abort-after", "0")
    assert code == 1, err
    assert pinned_everywhere(cluster) == before
    nodes = items(doc, "MachineConfigNode")
    for name in cluster.nodes:
        assert "--prune-all" in str(nodes[name]["status"]["conditions"]), nodes[name]
    assert "--prune-all" in err and "worker-set" in err

    cluster.file.write_text(objects.render([d for d in docs if d["kind"] != "PinnedImageSet"]))
    code, doc, err = cluster.pinctl("rollout")
    assert code == 2 and doc is None, "no set at all: refused before any node is contacted"
    assert "no PinnedImageSet" in err and "--prune-all" in err
    assert pinned_everywhere(cluster) == before


def test_prune_all_unpins_everything_and_says_what(cluster):
    before = rolled_out(cluster)
    cluster.file.write_text(objects.render([d for d in yaml.safe_load_all(cluster.file.read_text())
                                            if d["kind"] != "PinnedImageSet"]))
    code, doc, err = cluster.pinctl("rollout", "--prune-all")
    assert code == 0, err
    assert all(synchronizer(p)["updatedMachineCount"] == synchronizer(p)["machineCount"]
               for p in items(doc, "MachineConfigPool").values())
    assert "n3: unpinning every set: infra-set" in err and "worker-set" in err, err
    assert not any(pinned_everywhere(cluster).values())

    cluster.write(["app-a", "oci"], ["three-layers"])
    rolled_out(cluster)
    proc = run("pinsvc.coordinator.cli", "node", "apply", "--endpoint", cluster.agents["n1"].endpoint,
               "--prune-all", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert "unpinning every set: worker-set" in proc.stderr
    assert all(image in proc.stderr for image in before["n1"]), "it names the images too"
    assert json.loads(proc.stdout)["status"]["pinnedImageSets"] == []
    assert not cluster.crios["n1"].pinned_images() and cluster.crios["n2"].pinned_images()


def test_pinsvc_apply_of_an_empty_list_is_refused(cluster):
    before = rolled_out(cluster)
    proc = run("pinsvc", "apply", "--endpoint", cluster.agents["n1"].endpoint, "-", stdin="[]")
    assert proc.returncode == 2 and "--prune-all" in proc.stderr, proc.stderr
    assert pinned_everywhere(cluster) == before
    proc = run("pinsvc", "apply", "--endpoint", cluster.agents["n1"].endpoint, "--prune-all", "-", stdin="[]")
    assert proc.returncode == 0, proc.stderr
    assert not cluster.crios["n1"].pinned_images()
