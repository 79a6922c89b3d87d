"""`pinsvc agent` as a subprocess against a devenv CRI-O and registry (tests, demo, bench)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pinsvc.client import PinClient
from pinsvc.devenv.crio import Crio
from pinsvc.devenv.registry import Registry


class AgentProcess:
    """`pinsvc agent` as a subprocess against the session's CRI-O."""

    def __init__(self, workdir: Path, crio: Crio, registry: Registry, **overrides: str):
        self.workdir = workdir
        self.socket = workdir / "agent.sock"
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
            "registry-pull-secret": str(workdir / "config.json"),
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
        args = [sys.executable, "-m", "pinsvc", "agent"]
        for key, value in self.flags.items():
            if isinstance(value, bool):  # --flag / --no-flag
                args.append(f"--{key}" if value else f"--no-{key}")
            else:
                args += [f"--{key}", str(value)]
        return args

    def start(self, timeout: float = 15) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self._healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent did not become healthy in {timeout}s:\n{self.log()}")

    def _healthy(self) -> bool:
        with grpc.insecure_channel(f"unix:{self.socket}") as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> PinClient:
        return PinClient(self.endpoint)
