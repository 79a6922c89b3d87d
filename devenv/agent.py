"""`pinsvc agent` as a subprocess against a devenv CRI-O and registry (tests, demo, bench)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinsvc_client import PinClient

from pinsvc.client import connect
from devenv.crio import Crio
from devenv.process import terminate
from devenv.registry import Registry


class AgentProcess:
    """`pinsvc agent` as a subprocess against a devenv CRI-O, in its own session (a Ctrl-C
    reaches only the caller, which stops it). It reads that CRI-O's registries
    configuration and, as its pull secret, CRI-O's `global_auth_file` (as on a node, where
    both are the kubelet's config.json). Flag values: a string, True/False for
    `--flag`/`--no-flag`, or None for a bare `--flag`."""

    profile: Path | None = None  # run under cProfile, writing here (main thread only)

    def __init__(self, workdir: Path, crio: Crio, registry: Registry, **overrides: str | bool | None):
        self.workdir = workdir
        self.socket = Path(str(overrides.get("server-socket") or workdir / "agent.sock"))
        self.log_path = workdir / "agent.log"
        self.flags = {
            "node-name": "e2e-node",
            "cri-endpoint": crio.endpoint,
            "server-socket": str(self.socket),
            "state-dir": str(workdir / "state"),
            "dropin-directory": str(crio.dropin_dir),
            "dropin-crio-binary": str(crio.binary),
            "dropin-crio-config": str(crio.config_path),
            "reload-strategy": "signal",
            "reload-pidfile": str(crio.pidfile),
            "registry-insecure": registry.host,
            "registry-pull-secret": str(crio.auth_file),
            "registry-registries-conf": str(crio.registries_conf),
            "registry-registries-conf-dirs": str(crio.registries_conf_dir),
            "pull-backoff-initial-seconds": "0.2",
            "pull-backoff-max-seconds": "0.5",
            "pull-max-attempts": "3",
            "verify-timeout-seconds": "5",
            **overrides,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        args = [sys.executable]
        if self.profile is not None:
            args += ["-m", "cProfile", "-o", str(self.profile)]
        args += ["-m", "pinsvc", "agent"]
        for key, value in self.flags.items():
            if isinstance(value, bool):
                args.append(f"--{key}" if value else f"--no-{key}")
            elif value is None:
                args.append(f"--{key}")
            else:
                args += [f"--{key}", str(value)]
        return args

    def start(self, timeout: float = 15, *, runtime: bool = True) -> float:
        """Starts the agent and waits until it serves and its runtime answers (health ""),
        or only until it serves (runtime=False: health `liveness`); returns the seconds that
        took."""
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self.health("" if runtime else "liveness") == "SERVING":
                return time.monotonic() - t0
            time.sleep(0.05)
        health = f"liveness {self.health('liveness') or 'no answer'}, server {self.health() or 'no answer'}"
        self.stop()  # a caller that gets the error has no process to stop
        raise RuntimeError(f"agent did not become healthy in {timeout}s (health: {health}):\n{self.log()}")

    def health(self, service: str = "") -> str:
        """The gRPC health of `service` ("" = the whole server), "" when there is no answer."""
        with grpc.insecure_channel(f"unix:{self.socket}") as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                  timeout=1)
            except grpc.RpcError:
                return ""
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def stop(self) -> None:
        terminate(self.proc, 10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> PinClient:
        return connect(self.endpoint)
