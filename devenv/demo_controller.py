"""The controller demo: a real kube-apiserver (etcd, OpenShift's CRDs, the controller's RBAC
from deploy/), 3 nodes (a real CRI-O and its pinsvc agent each) as Node objects in the pools
`master` and `worker`, and pinsvc-controller running with its ServiceAccount's token. Then,
as a user would: `kubectl apply -f` of the documented PinnedImageSets, and
`kubectl get/describe machineconfignode` once the cluster has pinned them by itself.

    python -m devenv.demo_controller [--keep-logs]    # from the repository root (scripts/demo-controller.sh)

Exit status 0 only when every node's MachineConfigNode reports its sets at the desired
generation and its CRI-O reports every image pinned (crictl). Everything is stopped and
removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from devenv import cluster
from devenv.controller import ControllerProcess
from devenv.environment import Environment
from devenv.kube import KubeCluster
from devenv.paths import REPO

NODES = {"master-0": ("master",), "worker-0": ("worker",), "worker-1": ("worker",)}
SETS = {"master": ("master-pinned-images", ("app-a", "three-layers")),
        "worker": ("worker-pinned-images", ("app-a", "app-b", "oci", "multiarch"))}
TIMEOUT = 90.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def shell(kube: KubeCluster, *args: str) -> str:
    """Runs kubectl and prints the command and its output, as a terminal would show them."""
    print(f"$ kubectl {' '.join(args)}", flush=True)
    out = kube.kubectl(*args).stdout.rstrip()
    print(out, flush=True)
    return out


def documented_sets(env: Environment) -> str:
    """The documentation's PinnedImageSet YAML, one per role, with the registry's digests."""
    docs = []
    for role, (name, images) in SETS.items():
        docs.append({"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
                     "metadata": {"labels": {"machineconfiguration.openshift.io/role": role}, "name": name},
                     "spec": {"pinnedImages": [{"name": env.images[i]} for i in images]}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def converged(kube: KubeCluster) -> bool:
    items = kube.get("machineconfignodes")["items"]
    return len(items) == len(NODES) and all(
        (m.get("status") or {}).get("pinnedImageSets") and all(
            s.get("currentGeneration") == s["desiredGeneration"] for s in m["status"]["pinnedImageSets"])
        for m in items)


def pools_converged(kube: KubeCluster) -> bool:
    for pool in kube.get("machineconfigpools")["items"]:
        entry = [s for s in (pool.get("status") or {}).get("poolSynchronizersStatus", [])
                 if s["poolSynchronizerType"] == "PinnedImageSets"]
        if not entry or entry[0]["updatedMachineCount"] != entry[0]["machineCount"]:
            return False
    return True


def run(root: Path) -> int:
    t0 = time.monotonic()
    say("Starting etcd, kube-apiserver (OpenShift's CRDs), a registry and 3 CRI-Os with their agents")
    kube = KubeCluster(root / "kube")
    env = Environment(root / "nodes", NODES)
    controller = None
    try:
        kube.start()
        kube.kubectl("create", "namespace", "pinsvc")
        rbac = [d for d in yaml.safe_load_all((REPO / "deploy/kubernetes/controller.yaml").read_text())
                if d and d["kind"] != "Deployment"]
        kube.apply(rbac)
        asyncio.run(env.start())
        print(f"API server {kube.server}, ready in {time.monotonic() - t0:.1f} s", flush=True)

        say("The cluster: 3 Nodes (their agents' sockets annotated), pools master and worker")
        kube.apply([cluster.node(name, roles, endpoint=env.nodes[name].agent.endpoint) for name, roles in NODES.items()]
                   + [cluster.pool("master"), cluster.pool("worker")])
        shell(kube, "get", "nodes", "-L", "node-role.kubernetes.io/worker")

        say("pinsvc-controller, with the ServiceAccount's token only (deploy/kubernetes/controller.yaml)")
        token = kube.token_kubeconfig("pinsvc-controller", "pinsvc", root / "controller.kubeconfig")
        controller = ControllerProcess(root, token, identity="demo-controller").start()
        if not controller.wait_for_log("caches synced"):
            print(controller.log(), file=sys.stderr)
            return 1
        print(f"leading the Lease pinsvc/pinsvc-controller; log {controller.log_path}", flush=True)

        say("kubectl apply -f pinned-images.yaml (as the OpenShift documentation writes it)")
        path = root / "pinned-images.yaml"
        path.write_text(documented_sets(env))
        print(path.read_text().rstrip(), flush=True)
        shell(kube, "apply", "-f", str(path))
        t1 = time.monotonic()
        while not converged(kube):
            if time.monotonic() - t1 > TIMEOUT:
                print(f"not converged after {TIMEOUT:g}s:\n{controller.log()}", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"every node pinned its sets {time.monotonic() - t1:.1f} s after the apply", flush=True)
        while not pools_converged(kube) and time.monotonic() - t1 < TIMEOUT:
            time.sleep(0.3)  # the pools' roll-up is written at most once a second

        say("What users read: MachineConfigNode and MachineConfigPool status, events")
        shell(kube, "get", "machineconfignodes", "-o",
              "custom-columns=NODE:.metadata.name,POOL:.spec.pool.name,SET:.status.pinnedImageSets[*].name,"
              "DESIRED:.status.pinnedImageSets[*].desiredGeneration,CURRENT:.status.pinnedImageSets[*].currentGeneration")
        shell(kube, "describe", "machineconfignode", "worker-0")
        pools = {p["metadata"]["name"]: p.get("status", {}) for p in kube.get("machineconfigpools")["items"]}
        print("$ kubectl get machineconfigpools -o json  # status.poolSynchronizersStatus, PinnedImageSets entry")
        for name, status in pools.items():
            entry = [s for s in status.get("poolSynchronizersStatus", []) if s["poolSynchronizerType"] == "PinnedImageSets"]
            print(f"{name}: {json.dumps(entry)}")
        shell(kube, "get", "events", "-n", "default", "--field-selector", "reason=RolloutComplete")

        say("crictl images --pinned, per node (what each CRI-O reports)")
        ok = True
        for name, roles in NODES.items():
            wanted = {env.images[i] for i in SETS[roles[0]][1]}
            pinned = env.nodes[name].crio.pinned_images()
            missing = wanted - pinned
            ok &= not missing
            print(f"{name}: {len(wanted) - len(missing)} of {len(wanted)} images of its set pinned"
                  + (f"; MISSING {sorted(missing)}" if missing else ""))
        say(("OK" if ok else "FAILED") + f": {time.monotonic() - t0:.1f} s in all")
        return 0 if ok else 1
    finally:
        if controller is not None:
            controller.stop()
        env.stop()
        kube.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory (logs) at the end")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pinsvc-demo-controller-"))
    print(f"pinsvc controller demo; work directory {root}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(root)
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.keep_logs:
            shutil.rmtree(root, ignore_errors=True)
        print(f"stopped and removed everything{f' but the logs in {root}' if args.keep_logs else ''}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
