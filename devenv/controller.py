"""`pinsvc-controller` as a subprocess against a devenv API server (tests, demo, bench), in
its own session so that a test can kill it like a crashed pod."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devenv.paths import REPO
from devenv.process import tail, terminate

TEST_LEASE = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "1")
"""Short leader election timings for tests: a killed leader is replaced within ~5 s."""


class ControllerProcess:
    """`http` is where it serves /healthz, /readyz and /metrics (a free loopback port)."""

    def __init__(self, workdir: Path, kubeconfig: Path, *args: str, identity: str = "controller",
                 lease_namespace: str = "pinsvc"):
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{identity}.log"
        self.identity = identity
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.http = f"http://127.0.0.1:{port}"
        self.args = ["--kubeconfig", str(kubeconfig), "--identity", identity, "--lease-namespace", lease_namespace,
                     "--http-address", f"127.0.0.1:{port}", *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ControllerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pinsvc.controller.cli", *self.args], cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (the Lease is released), SIGKILL after `timeout`; the exit code."""
        terminate(self.proc, timeout)
        return self.proc.returncode if self.proc else None

    def kill(self) -> None:
        """SIGKILL: a crashed leader, whose Lease expires instead of being released."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def wait_for_log(self, text: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return True
            time.sleep(0.2)
        return False
