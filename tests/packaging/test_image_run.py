"""The container image built and run here: buildah builds it from the Dockerfile
(scripts/build-image.sh, FROM a local Debian 12 + python3 base made by mmdebstrap), podman
runs it (runc), a real CRI-O and registry serve it.

- what is in it: only the lock's distributions and the project's two (pip list, JSON),
  no compilers, no pip in the venv, no dev environment; the default user, command and a
  read-only root file system;
- the agent as deploy/kubernetes/agent.yaml runs it (tests/packaging/containers.py turns
  the DaemonSet's pod into `podman run`): its probe commands, and an Apply through its unix
  socket that pins images on the CRI-O (crictl);
- the image pushed to the registry with skopeo and pinned by digest by itself: pinctl in
  the image, run as the coordinator Job runs it (uid 65532, read-only), rolls a set with
  the image's own digest out to the containerised agent over mutual TLS;
- the agent container stops at once on SIGTERM, as when its pod goes.

Needs root, buildah, podman, runc, skopeo and mmdebstrap (scripts/install-peers.sh); skipped
with the reason where they are missing, and an error under CI. The first build on a machine
takes ~2 minutes (the base, PyPI); later ones reuse the cached layers (seconds).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devenv import cluster
from devenv import images as sample_images
from devenv.crio import Crio
from devenv.paths import bin_path
from devenv.registry import Registry
from pinsvc_client import SetSpec, connect
from tests.e2e.helpers import final_status, free_port, set_status
from tests.packaging.containers import command, podman, run_args
from tests.packaging.test_image import OWN, lock_entries
from tests.pki import issue

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/pinsvc:0.1.0"
TOOLS = ("buildah", "podman", "runc", "skopeo", "mmdebstrap")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building and running the image needs root (buildah, podman, CRI-O)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run bash scripts/install-peers.sh"
    try:
        bin_path("crio"), bin_path("crictl")
    except FileNotFoundError as e:
        return f"{e} (run bash scripts/install-peers.sh)"
    return None


REASON = _unavailable()
if REASON and os.environ.get("CI"):
    raise RuntimeError(f"CI must build and run the image: {REASON}")
pytestmark = [pytest.mark.image, pytest.mark.skipif(REASON is not None, reason=REASON or ""),
              pytest.mark.timeout(1800)]


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text()) if d]


def pod_of(name: str, kind: str, object_name: str) -> dict:
    (found,) = [d for d in manifests(name) if d["kind"] == kind and d["metadata"]["name"] == object_name]
    return found["spec"]["template"]["spec"]


@dataclass
class Image:
    tag: str
    id: str
    build_seconds: float


@pytest.fixture(scope="module")
def image() -> Image:
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), "--base", "debian", "--tag", TAG],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"build-image.sh: exit {done.returncode}\n{done.stderr[-4000:]}"
    return Image(TAG, done.stdout.split()[-1], time.monotonic() - t0)


def run_image(*argv: str, options: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    return podman("run", "--rm", "--network=none", *options, TAG, *argv, check=check)


# --- what is in the image ------------------------------------------------------------------

def test_image_is_small_and_holds_no_build_tools(image):
    inspect = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    size, layers = inspect["Size"], len(inspect["RootFS"]["Layers"])
    # newest first: the venv, the user, the base
    history = [h for h in json.loads(podman("history", "--format", "json", image.tag).stdout) if h["size"]]
    print(f"\nimage {image.tag}: {size / 1e6:.0f} MB, {layers} layers, built in {image.build_seconds:.0f} s; "
          + ", ".join(f"{h['size'] / 1e6:.1f} MB {h['CreatedBy'][:40]!r}" for h in history))
    # the base, the user, the venv: nothing of the builder stage (its wheels, sources, pip cache)
    assert layers == 3, history
    assert "COPY dir:" in history[0]["CreatedBy"], history[0]
    assert history[1]["size"] < 100_000 and "useradd" in history[1]["CreatedBy"], history[1]
    assert size < 450e6, f"{size / 1e6:.0f} MB: what grew?"
    tools = run_image("sh", "-c", "for t in gcc cc c++ make ld as git apt-get curl; do command -v $t; done; "
                      "ls -d /wheels /src /root/.cache 2>/dev/null; true").stdout.split()
    assert tools == []
    venv = run_image("ls", "/opt/pinsvc/bin").stdout.split()
    assert {"pinsvc", "pinctl", "pinsvc-controller", "python3"} <= set(venv), venv
    assert not [f for f in venv if f.startswith("pip")], venv


def test_pip_list_in_the_image_is_the_lock_and_the_project(image):
    """The venv's distributions, as pip lists them inside the image (the base's pip, pointed
    at the venv) and as the build recorded them in /opt/pinsvc/pip-list.json, are exactly
    those of requirements/image.txt at their locked versions, plus pinsvc and pinsvc-client."""
    live = run_image("sh", "-c", "PATH=${PATH#/opt/pinsvc/bin:} exec python3 -m pip --python /opt/pinsvc/bin/python "
                     "list --format json --disable-pip-version-check").stdout
    recorded = run_image("cat", "/opt/pinsvc/pip-list.json").stdout
    locked = {name: version for name, (version, _) in lock_entries().items()}
    for listing in (live, recorded):
        installed = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(listing)}
        assert installed == {**locked, **{name: "0.1.0" for name in OWN}}


def test_every_native_library_of_the_venv_finds_its_dependencies(image):
    """grpcio needs libstdc++, pydantic-core libgcc_s...: ldd of every shared object of the
    venv (the wheels' own libraries and the base's) finds them all."""
    done = run_image("sh", "-c", "find /opt/pinsvc -name '*.so*' -type f | while read -r f; do "
                     "ldd \"$f\" | sed \"s|^|$f: |\"; done")
    assert "grpc/_cython/cygrpc" in done.stdout
    assert [line for line in done.stdout.splitlines() if "not found" in line] == []


def test_default_command_runs_as_non_root_on_a_read_only_root(image):
    done = run_image(options=("--read-only",))
    assert "roll the sets out" in done.stdout
    assert "Kubernetes-native controller" in run_image("pinsvc-controller", "--help", options=("--read-only",)).stdout
    assert run_image("id", "-u").stdout.strip() == "65532"
    done = run_image("touch", "/opt/pinsvc/x", options=("--read-only", "--user", "0"), check=False)
    assert done.returncode == 1 and "Read-only file system" in done.stderr, done


def test_nothing_of_the_dev_environment_or_the_tests_is_shipped(image):
    done = run_image("python3", "-c", "import importlib.util as u, pinsvc.gen, pinsvc_client._gen; "
                     "print(u.find_spec('devenv'), u.find_spec('tests'), u.find_spec('pytest'))")
    assert done.stdout.split() == ["None", "None", "None"]


# --- the agent, run as the DaemonSet runs it ----------------------------------------------

@dataclass
class Peers:
    root: Path
    registry: Registry
    crio: Crio
    workload: dict[str, str]


@pytest.fixture(scope="module")
def peers() -> Peers:
    root = Path(tempfile.mkdtemp(prefix="pinsvc-img-"))
    registry = Registry(root / "registry")
    registry.start()
    # The image store outside CRI-O's root: that root is mounted into the container.
    crio = Crio(root / "crio", registries=[registry.host], storage_dir=root / "storage")
    try:
        crio.start()
        items = sample_images.small_workload()
        refs = asyncio.run(sample_images.push_many(registry.host, list(items.values())))
        yield Peers(root, registry, crio, dict(zip(items, refs)))
    finally:
        crio.stop()
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Agent:
    name: str
    socket: Path
    tcp: str
    ca: Path
    pinctl_tls: Path
    paths: dict[str, str]


@pytest.fixture(scope="module")
def agent(image, peers) -> Agent:
    """The DaemonSet's agent container against the test's CRI-O: its host paths moved
    under the test's directories, NODE_NAME and HOST_IP as the downward API would give them,
    its mTLS secret made here, and two changes the test environment needs: free loopback
    ports for the TCP and metrics listeners, and the test registry (plain HTTP) as insecure."""
    root = peers.root
    pki = root / "pki"
    ca = issue(pki, "ca", ca=True)
    server = issue(pki, "pinsvc-agent", issuer=ca, server=True, dns=("pinsvc-agent",))
    client = issue(pki, "pinctl", issuer=ca)
    secrets = {"pinsvc-agent-tls": root / "agent-tls", "pinsvc-coordinator-tls": root / "pinctl-tls"}
    for directory, cert in ((secrets["pinsvc-agent-tls"], server), (secrets["pinsvc-coordinator-tls"], client)):
        directory.mkdir()
        shutil.copy(cert.cert, directory / "tls.crt")
        shutil.copy(cert.key, directory / "tls.key")
        shutil.copy(ca.cert, directory / "ca.crt")
    (root / "kubelet-config.json").write_text('{"auths": {}}\n')
    (root / "run").mkdir()
    paths = {"/var/run/crio": str(peers.crio.root), "/etc/crio": str(peers.crio.root),
             "/var/lib/kubelet/config.json": str(root / "kubelet-config.json"),
             "/var/lib/pinsvc": str(root / "state"), "/run/pinsvc": str(root / "run"),
             "/var/lib/containers/storage": str(peers.crio.storage_root)}
    pod = pod_of("agent.yaml", "DaemonSet", "pinsvc-agent")
    (container,) = pod["containers"]
    env = {"NODE_NAME": "image-node", "HOST_IP": "127.0.0.1"}
    tcp = f"127.0.0.1:{free_port()}"
    argv = [re.sub(r"^--server-tcp=127\.0\.0\.1:9440$", f"--server-tcp={tcp}", a)
            for a in command(container, env=env, paths=paths)]
    argv = [re.sub(r"^--server-metrics=127\.0\.0\.1:9441$", f"--server-metrics=127.0.0.1:{free_port()}", a)
            for a in argv] + [f"--registry-insecure={peers.registry.host}"]
    assert f"--server-tcp={tcp}" in argv and f"--cri-endpoint=unix://{peers.crio.socket}" in argv
    name = f"pinsvc-agent-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", "--name", name, *run_args(pod, container, env=env, paths=paths, secrets=secrets),
           image.tag, *argv)
    socket_path = root / "run" / "pinsvc.sock"
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", f"agent container {state}:\n{podman('logs', name, check=False).stderr}"
            assert time.monotonic() < deadline, podman("logs", name, check=False).stderr
            time.sleep(0.2)
        yield Agent(name, socket_path, tcp, ca.cert, secrets["pinsvc-coordinator-tls"], paths)
    finally:
        print(podman("logs", name, check=False).stderr[-6000:])
        podman("rm", "--force", "--time", "10", name, check=False)


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probe_commands_pass_in_the_container(agent, probe):
    (container,) = pod_of("agent.yaml", "DaemonSet", "pinsvc-agent")["containers"]
    argv = command({"command": container[probe]["exec"]["command"]}, env={}, paths=agent.paths)
    deadline = time.monotonic() + 30
    while (done := podman("exec", agent.name, *argv, check=False)).returncode and time.monotonic() < deadline:
        time.sleep(0.5)  # the startup probe allows two minutes
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


async def test_apply_through_the_containerised_agent_pins_on_crio(agent, peers):
    images = [peers.workload["app-a"], peers.workload["oci"]]
    async with connect(f"unix://{agent.socket}") as client:
        events = [event async for event in client.apply([SetSpec("image-test", 1, images)])]
    assert set_status(final_status(events), "image-test").current_generation == 1, events[-3:]
    assert peers.crio.pinned_images() >= set(images)
    dropin = (peers.crio.dropin_dir / "50-pinned-images").read_text()
    assert all(ref in dropin for ref in images)


# --- the image pins itself ----------------------------------------------------------------

def test_the_image_pins_itself_by_digest(image, peers, agent):
    """pushed with skopeo; pinctl in the image, as the coordinator Job runs it (with the
    set in a file instead of --kube: no API server here), rolls it out over mTLS."""
    repo = f"{peers.registry.host}/pinsvc/pinsvc"
    digest_file = peers.root / "digest"
    t0 = time.monotonic()
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file),
                    f"containers-storage:{image.tag}", f"docker://{repo}:0.1.0"], check=True, timeout=600)
    print(f"\npushed {image.tag} to {repo} in {time.monotonic() - t0:.1f} s")
    self_ref = f"{repo}@{digest_file.read_text().strip()}"

    (peers.root / "cluster").mkdir()
    (peers.root / "cluster" / "cluster.yaml").write_text(cluster.render([
        cluster.pinned_image_set("pinsvc-itself", [self_ref], role="worker"),
        cluster.pool("worker", pinned_image_sets=["pinsvc-itself"]),
        cluster.node("image-node", ("worker",), endpoint=agent.tcp)]))
    pod = pod_of("coordinator.yaml", "Job", "pinsvc-rollout-once")
    (container,) = pod["containers"]
    argv = command(container, env={}, paths={})
    assert argv[:3] == ["pinctl", "rollout", "--kube"]
    argv[2:3] = ["-f", "/cluster/cluster.yaml"]
    options = run_args(pod, container, env={}, paths={}, secrets={"pinsvc-coordinator-tls": agent.pinctl_tls})
    # a pod reaches the node's address; here the agent listens on the host's loopback
    options = [o.replace("--network=none", "--network=host") for o in options]
    assert {"--read-only", "--user", "65532:65532", "--cap-drop=ALL"} <= set(options)
    done = podman("run", "--rm", *options, "--volume", f"{peers.root / 'cluster'}:/cluster:ro",
                  image.tag, *argv, check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (node,) = [i for i in json.loads(done.stdout)["items"] if i["kind"] == "MachineConfigNode"]
    assert node["status"]["pinnedImageSets"] == [
        {"name": "pinsvc-itself", "desiredGeneration": 1, "currentGeneration": 1}], done.stdout
    pinned = peers.crio.images_json()["images"]
    mine = [i for i in pinned if any(d.endswith(self_ref.rpartition("@")[2]) for d in i["repoDigests"])]
    assert len(mine) == 1 and mine[0]["pinned"], pinned


def test_the_agent_container_stops_at_once_on_sigterm(agent):
    """What the kubelet does when the pod goes: SIGTERM to the agent (PID 1 of the container,
    which ignores signals it has no handler for), SIGKILL after the grace period. The agent
    exits 0 well within the DaemonSet's terminationGracePeriodSeconds. Last in this module:
    it stops the agent."""
    grace = pod_of("agent.yaml", "DaemonSet", "pinsvc-agent")["terminationGracePeriodSeconds"]
    t0 = time.monotonic()
    podman("stop", "--time", str(grace), agent.name)
    took = time.monotonic() - t0
    assert podman("inspect", "--format", "{{.State.ExitCode}}", agent.name).stdout.strip() == "0"
    assert took < 10, f"the agent took {took:.1f} s to stop"
