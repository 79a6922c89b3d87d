"""A real distribution registry (Debian `docker-registry`) run as a test peer.

The registry listens on a free loopback port chosen at the first `start()` and keeps it
across `stop()`/`start()`, so tests can take it down mid-way and bring it back at the same
address with its data intact. `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT) to simulate
a registry that accepts connections but never answers.

    with Registry(tmp_path) as registry:
        push(registry.url, image)
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import httpx

from devenv.process import tail, terminate

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 10.0
"""Seconds `start()` waits for `GET /v2/` to answer."""
STOP_TIMEOUT = 5.0
"""Seconds `stop()` waits after SIGTERM before it sends SIGKILL."""
LOG_TAIL_LINES = 20


class RegistryError(RuntimeError):
    """The registry could not be started or is used in the wrong state."""


class Registry:
    """One `docker-registry serve` process with all its state under `root`.

    `htpasswd` maps usernames to passwords; when given, the registry requires HTTP basic
    auth for every request (bcrypt hashes written by `htpasswd -B`, apache2-utils).
    `tls` (certificate, key) serves HTTPS instead of plain HTTP. `access_log` writes one
    line per request, and the registry's info lines (`auth.user.name` of each authenticated
    request), to its log.
    """

    def __init__(self, root: Path, *, htpasswd: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None, access_log: bool = False) -> None:
        self.root = Path(root)
        self.htpasswd = dict(htpasswd) if htpasswd else None
        self.tls = tls
        self.access_log = access_log
        self._secret = secrets.token_hex(16)
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def config_path(self) -> Path:
        """The registry's config.yml (JSON, which is valid YAML)."""
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        """The registry's stdout and stderr."""
        return self.root / "registry.log"

    @property
    def port(self) -> int:
        """The loopback port, fixed at the first `start()`."""
        if self._port is None:
            raise RegistryError(f"registry under {self.root} was never started; no port yet")
        return self._port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (`https://` with `tls`), the base URL of the HTTP API."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def running(self) -> bool:
        """Whether the registry process is alive (paused counts as alive)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The registry's pid while it runs, else None."""
        return self._process.pid if self.running else None

    def start(self) -> None:
        """Start the registry and wait until `GET /v2/` answers.

        The first call picks a free port; later calls (after `stop()`) reuse it.
        Raises `RegistryError` with the log tail when the registry is not ready in time.
        """
        if self.running:
            raise RegistryError(f"registry at {self.url} is already running")
        if self._port is None:
            self._port = _free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the caller must not reach it
            )
        self._paused = False
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the registry: SIGTERM, then SIGKILL after `STOP_TIMEOUT`. Idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if self._paused:
            process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._paused = False
        terminate(process, STOP_TIMEOUT)

    def pause(self) -> None:
        """Freeze the registry (SIGSTOP): connections are accepted but never answered."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused registry (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the registry log ("" when there is none)."""
        return tail(self.log_path, lines)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise RegistryError(f"cannot send {signum.name}: registry at {self.root} is not running")
        assert self._process is not None
        self._process.send_signal(signum)

    def _write_config(self) -> None:
        config = render_config(
            data_dir=self.root / "data",
            addr=self.host,
            secret=self._secret,
            htpasswd_path=self._write_htpasswd() if self.htpasswd else None,
            tls=self.tls,
            access_log=self.access_log,
        )
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def _write_htpasswd(self) -> Path:
        assert self.htpasswd is not None
        path = self.root / "htpasswd"
        lines = [_htpasswd_line(user, password) for user, password in sorted(self.htpasswd.items())]
        path.write_text("".join(lines))
        return path

    def _wait_ready(self) -> None:
        ready_status = 401 if self.htpasswd else 200
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RegistryError(
                    f"registry at {self.url} exited with status {self._process.returncode} "
                    f"during start; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                status = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=False).status_code
            except httpx.TransportError as e:
                last = repr(e)
            else:
                if status == ready_status:
                    return
                last = f"HTTP {status}, expected {ready_status}"
            time.sleep(0.05)
        raise RegistryError(
            f"registry at {self.url} not ready after {START_TIMEOUT:g} s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )


def render_config(*, data_dir: Path, addr: str, secret: str, htpasswd_path: Path | None,
                  tls: tuple[Path, Path] | None = None, access_log: bool = False) -> dict:
    """The registry configuration as a dict (written as JSON, which YAML parsers accept)."""
    config: dict = {
        "version": "0.1",
        "log": {"level": "info" if access_log else "warn", "formatter": "text",
                "accesslog": {"disabled": not access_log}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": True},
        },
        "http": {"addr": addr, "secret": secret},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    if htpasswd_path is not None:
        config["auth"] = {"htpasswd": {"realm": "pinsvc-test", "path": str(htpasswd_path)}}
    return config


def _htpasswd_line(user: str, password: str) -> str:
    """One `user:bcrypt-hash` line, made by `htpasswd -Bin` (apache2-utils)."""
    binary = shutil.which("htpasswd")
    if binary is None:
        raise RegistryError("htpasswd not found; install apache2-utils for an auth registry")
    result = subprocess.run(  # -i: password on stdin, not in the process list
        [binary, "-Bin", user], input=password, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RegistryError(f"htpasswd failed for user {user!r}: {result.stderr.strip()}")
    return result.stdout.strip() + "\n"


def _free_port() -> int:
    """A port on 127.0.0.1 the kernel reports free (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
