"""A real Kubernetes API server as a test, demo and benchmark peer: etcd plus kube-apiserver
on loopback, with OpenShift's own CRDs (PinnedImageSet, MachineConfigNode,
MachineConfigPool) installed, all state under one directory.

This is what controller-runtime's envtest runs: no kubelet, no controller-manager (so no
garbage collection and no namespace finalization), no scheduler. Nodes are plain API
objects that the caller creates. `scripts/install-peers.sh` (install-kube-peers.sh) puts
the binaries and the CRDs in the cache.

    with KubeCluster(Path("/tmp/kube")) as kube:
        kube.kubectl("apply", "-f", "set.yaml")
        print(kube.kubeconfig)       # an admin kubeconfig (token in system:masters)

Authentication: a static token file (the admin token) and service account tokens
(`token_kubeconfig` runs `kubectl create token`, the TokenRequest API); RBAC authorizes.
Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from devenv.paths import INSTALL_HINT, MissingBinary, bin_path, cache_dir
from devenv.process import tail, terminate

START_TIMEOUT = 60.0
"""Seconds etcd or kube-apiserver may take to serve (~10 s for kube-apiserver on 2 idle cores)."""
STOP_TIMEOUT = 10.0
CRD_NAMES = ("pinnedimagesets.machineconfiguration.openshift.io",
             "machineconfignodes.machineconfiguration.openshift.io",
             "machineconfigpools.machineconfiguration.openshift.io")
ADMIN_USER = "admin"

_live: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _live:
        if process.poll() is None:
            process.kill()
            process.wait()


class KubeError(RuntimeError):
    """A peer did not start or a kubectl command failed; the message holds the log tail."""


def crd_dir() -> Path:
    """The CRD manifests install-kube-peers.sh fetched from github.com/openshift/api."""
    path = cache_dir() / "crds" / "openshift-api"
    if not (path / "0000_80_machine-config_01_machineconfigpools.crd.yaml").is_file():
        raise MissingBinary(f"OpenShift's CRDs are not in {path}: {INSTALL_HINT}")
    return path.resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """What of the Kubernetes peers is not installed, or None when all are."""
    try:
        for name in ("etcd", "kube-apiserver", "kubectl"):
            bin_path(name)
        crd_dir()
    except MissingBinary as e:
        return str(e)
    return None


class KubeCluster:
    """etcd and kube-apiserver under `root`, with OpenShift's CRDs established after
    `start()`. `etcd_dir` puts etcd's data elsewhere (e.g. a tmpfs for a benchmark)."""

    def __init__(self, root: Path, *, etcd_dir: Path | None = None,
                 apiserver_flags: tuple[str, ...] = ()) -> None:
        self.root = Path(root).resolve()
        self.etcd_dir = Path(etcd_dir) if etcd_dir else self.root / "etcd"
        self.apiserver_flags = apiserver_flags
        self.token = secrets.token_hex(16)
        self.etcd_port = self.peer_port = self.port = 0
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (the static token, group system:masters)."""
        return self.root / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        """kube-apiserver's self-signed serving certificate (with its CA), for clients."""
        return self.root / "certs" / "apiserver.crt"

    # -- start / stop --------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_etcd()
        self._write_credentials()
        self.port = _free_port()
        self.start_apiserver()
        self.write_kubeconfig(self.kubeconfig, token=self.token, user=ADMIN_USER)
        self.install_crds()

    def _start_etcd(self) -> None:
        self.etcd_port, self.peer_port = _free_port(), _free_port()
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.peer_port}"
        self.etcd = self._spawn("etcd", [
            str(bin_path("etcd")), "--name", "pinsvc", "--data-dir", str(self.etcd_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"pinsvc={peer}", "--log-level", "warn"])
        self._wait("etcd", self.etcd, lambda: self._get(f"{client}/health", tls=False).get("health") == "true")

    def _write_credentials(self) -> None:
        key = self.root / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        (self.root / "tokens.csv").write_text(f"{self.token},{ADMIN_USER},{ADMIN_USER},system:masters\n")
        (self.root / "tokens.csv").chmod(0o600)

    def start_apiserver(self) -> None:
        """(Re)starts kube-apiserver on the same port and waits until /readyz says ok."""
        self.apiserver = self._spawn("kube-apiserver", [
            str(bin_path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # a loopback advertise address needs no endpoints
            f"--cert-dir={self.root / 'certs'}",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.root / 'sa.key'}",
            f"--service-account-signing-key-file={self.root / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            *self.apiserver_flags])
        self._wait("kube-apiserver", self.apiserver, lambda: self._get(f"{self.server}/readyz", raw=True) == "ok")

    def stop_apiserver(self) -> None:
        terminate(self.apiserver, STOP_TIMEOUT)

    def restart_apiserver(self) -> float:
        """Stops kube-apiserver and starts it again (etcd keeps the data); returns the
        seconds it was not serving."""
        t0 = time.monotonic()
        self.stop_apiserver()
        self.start_apiserver()
        return time.monotonic() - t0

    def stop(self) -> None:
        terminate(self.apiserver, STOP_TIMEOUT)
        terminate(self.etcd, STOP_TIMEOUT)

    def __enter__(self) -> KubeCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        try:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        finally:
            log.close()
        _live.append(process)
        return process

    def _wait(self, name: str, process: subprocess.Popen, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise KubeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                if ready():
                    return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise KubeError(f"{name} did not serve within {START_TIMEOUT:g}s:\n{self.log(name)}")

    def _get(self, url: str, *, tls: bool = True, raw: bool = False) -> Any:
        request = urllib.request.Request(url)
        context = None
        if tls:
            request.add_header("Authorization", f"Bearer {self.token}")
            context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            body = response.read().decode()
        return body if raw else json.loads(body)

    def log(self, name: str, lines: int = 30) -> str:
        return tail(self.root / f"{name}.log", lines)

    # -- clients -------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, *, token: str, user: str) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "local", "cluster": {"server": self.server,
                                                       "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def token_kubeconfig(self, service_account: str, namespace: str, path: Path) -> Path:
        """A kubeconfig holding a token of `service_account` (TokenRequest API): a client
        using it has exactly that account's permissions."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration=24h").stdout.strip()
        return self.write_kubeconfig(path, token=token, user=f"{namespace}-{service_account}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, kubeconfig: Path | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([str(bin_path("kubectl")), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise KubeError(f"kubectl {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
        return done

    def apply(self, objects: list[dict], *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`kubectl apply -f -` of `objects` as one YAML stream, without the fields the API
        server owns (devenv.cluster fills them like a dump of a live cluster)."""
        server_owned = ("resourceVersion", "uid", "creationTimestamp", "generation")
        objects = [{**o, "metadata": {k: v for k, v in o["metadata"].items() if k not in server_owned}}
                   for o in objects]
        return self.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump_all(objects), check=check)

    def get(self, *args: str) -> dict:
        """`kubectl get ... -o json` as a dict."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def install_crds(self) -> None:
        """OpenShift's CRDs, applied and waited for until Established."""
        self.kubectl("apply", "--server-side", "-f", str(crd_dir()))
        # not `kubectl wait`: it fails instead of waiting while a new CRD has no conditions yet
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            established = {c["metadata"]["name"] for c in self.get("crd")["items"]
                           if any(k["type"] == "Established" and k["status"] == "True"
                                  for k in (c.get("status") or {}).get("conditions") or [])}
            if established >= set(CRD_NAMES):
                return
            if time.monotonic() > deadline:
                raise KubeError(f"CRDs not established within {START_TIMEOUT:g}s: {sorted(set(CRD_NAMES) - established)}")
            time.sleep(0.2)
