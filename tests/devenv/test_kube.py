"""The Kubernetes test peer: real etcd and kube-apiserver with OpenShift's own CRDs, and what
the API server itself enforces on those objects (OpenShift's CEL rules), so that the
controller's writes are checked by the same rules a cluster applies."""

from __future__ import annotations

import json
import os

import pytest

from devenv.cluster import pinned_image_set
from devenv.kube import KubeCluster, missing

REASON = missing()
if REASON and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the Kubernetes peer tests: {REASON}")

pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.timeout(120),
              pytest.mark.e2e]

DIGEST = "@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    with KubeCluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster


def test_serves_version_and_the_openshift_crds(kube):
    version = json.loads(kube.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"].startswith("v1.37."), version
    served = kube.kubectl("api-resources", "--api-group=machineconfiguration.openshift.io", "-o", "name").stdout.split()
    assert set(served) >= {"pinnedimagesets.machineconfiguration.openshift.io",
                           "machineconfignodes.machineconfiguration.openshift.io",
                           "machineconfigpools.machineconfiguration.openshift.io"}


def test_a_tag_reference_is_refused_by_the_api_server_itself(kube):
    """OpenShift's CEL rule on PinnedImageSet, not pinsvc's validation: `kubectl apply` fails."""
    tagged = pinned_image_set("tagged", ["quay.io/openshift/origin-cli:latest"], role="worker")
    done = kube.apply([tagged], check=False)
    assert done.returncode != 0
    assert "must end with a valid '@sha256:<digest>' suffix" in done.stderr, done.stderr
    assert kube.kubectl("get", "pinnedimageset", "tagged", check=False).returncode != 0

    good = pinned_image_set("digests", [f"quay.io/openshift/origin-cli{DIGEST}"], role="worker")
    kube.apply([good])
    assert kube.get("pinnedimageset", "digests")["metadata"]["generation"] == 1


def test_machineconfignode_status_generations_never_decrease(kube):
    """The rules the controller's status writes must satisfy: currentGeneration >= 1 and not
    decreasing, desired >= current, an error with every lastFailedGeneration."""
    kube.apply([{"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigNode",
                 "metadata": {"name": "worker-9"},
                 "spec": {"node": {"name": "worker-9"}, "pool": {"name": "worker"},
                          "configVersion": {"desired": "rendered-worker-1"}}}])

    def status(entry: dict) -> str:
        patch = json.dumps({"status": {"pinnedImageSets": [{"name": "s", **entry}]}})
        return kube.kubectl("patch", "machineconfignode", "worker-9", "--subresource=status", "--type=merge",
                            "-p", patch, check=False).stderr

    assert status({"desiredGeneration": 2, "currentGeneration": 2}) == ""
    assert "currentGeneration must not decrease" in status({"desiredGeneration": 2, "currentGeneration": 1})
    assert "greater than or equal to 1" in status({"desiredGeneration": 2, "currentGeneration": 0})
    assert "desired generation must be greater than or equal to the current" in status(
        {"desiredGeneration": 3, "currentGeneration": 4})
    assert "last failed generation error must be defined" in status(
        {"desiredGeneration": 3, "currentGeneration": 2, "lastFailedGeneration": 3})
