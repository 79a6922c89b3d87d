"""A real CRI-O as a test and demo peer: all of its state in one directory, run as root
without systemd.

`Crio(root)` writes a complete configuration under `root` (crio.conf, an empty drop-in
directory, registries.conf, policy.json, storage.conf, crictl.yaml); `start()` runs
CRI-O and returns once its image service answers. Several instances can run at once: each
has its own storage, run directory and socket, and listens on nothing but that socket
(the streaming server binds 127.0.0.1 on a random port).

Known sharing: containers/image keeps its blob-info cache at `/var/lib/containers/cache`
for root, and every CRI-O on the machine uses that one file (it only remembers which
registries hold which blobs; it is safe to share). Isolating it needs a private mount
namespace (`unshare --mount` and a bind mount), which this helper does not do.

The helper is synchronous (subprocess and signals); async callers wrap it in
`asyncio.to_thread`. It talks to CRI-O only through crictl, so it never loads a gRPC
runtime into the caller's process.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomlkit

from devenv.paths import bin_path

log = logging.getLogger(__name__)

RELOAD_COMPLETED = "Configuration reload completed"
RELOAD_FAILED = "Unable to reload configuration"
_RELOAD_MARKERS = ("Reloading configuration", "Set config ", RELOAD_COMPLETED, RELOAD_FAILED)

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_STOP_GRACE_S = 5.0

# Every CRI-O process started here and the directories its mounts may be left under (its
# root, and its storage when that lives elsewhere), so that none outlives the interpreter
# (tests that crash or forget stop()). Popen objects, not Crio objects: they must not be
# collected.
_live: dict[subprocess.Popen, tuple[Path, ...]] = {}

_MNT_DETACH = 2


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (from /proc/self/mountinfo)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            raw = line.split(" ")[4]
            # mountinfo escapes space, tab, newline and backslash as \ooo octal
            point = Path(raw.encode().decode("unicode_escape").encode("latin-1").decode())
            if point == root or root in point.parents:
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path, *, keep_root: bool = False) -> list[Path]:
    """Detach every mount at or below `root` (only below with `keep_root`); returns what
    was unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for point in mounts_under(root):
        if keep_root and point == root:
            continue
        if libc.umount2(os.fsencode(point), _MNT_DETACH) == 0:
            done.append(point)
        else:
            log.warning("cannot unmount %s: %s", point, os.strerror(ctypes.get_errno()))
    return done


def _unmount_leftovers(root: Path, storage: Path | None = None) -> None:
    """Unmounts what CRI-O left under its root and, below (not at) a storage directory
    outside it (that one may be the caller's own mount, e.g. a small tmpfs)."""
    unmount_under(root)
    if storage is not None:
        unmount_under(storage, keep_root=True)


@atexit.register
def _kill_leftovers() -> None:
    for proc, roots in list(_live.items()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _unmount_leftovers(*roots)


class CrioError(RuntimeError):
    """CRI-O failed to start, stop, reload or answer; the message holds its log tail."""


def overlay_unsupported_reason(directory: Path) -> str | None:
    """None when an overlay mount works with its layers in `directory`, else why not.

    Mounts a throwaway overlay (one lower, upper, work) under `directory` and unmounts it:
    the same kernel and filesystem checks containers/storage's overlay driver relies on.
    """
    if os.geteuid() != 0:
        return "overlay mounts need root"
    probe = directory / ".overlay-probe"
    shutil.rmtree(probe, ignore_errors=True)
    dirs = {name: probe / name for name in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs["lower"] / "file").write_text("lower\n")
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    target = os.fsencode(dirs["merged"])
    try:
        if libc.mount(b"overlay", target, b"overlay", 0, opts.encode()) != 0:
            err = ctypes.get_errno()
            return f"mount -t overlay failed in {directory}: {os.strerror(err)}"
        try:
            if (dirs["merged"] / "file").read_text() != "lower\n":
                return "overlay mount does not show its lower layer"
            (dirs["merged"] / "new").write_text("upper\n")
            if not (dirs["upper"] / "new").exists():
                return "overlay mount does not write to its upper layer"
        finally:
            libc.umount2(target, 0)
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _merge(base: dict, extra: dict) -> dict:
    """`extra` merged into `base` (tables recursively, other values replaced)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _system_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        raise CrioError(f"{name} not found: run `bash scripts/install-peers.sh` (apt {name})")
    return path


class Crio:
    """One CRI-O instance whose whole state lives under `root`.

    `registries` are `host:port` registries CRI-O may use over plain HTTP.
    `storage_dir` (default `root/storage`) is containers/storage's graphroot, where image
    layers are unpacked: e.g. a small filesystem of the caller's to fill the disk. It is
    never unmounted itself (`stop()` unmounts only what CRI-O mounted below it).
    `storage_driver` "overlay" falls back to "vfs" (logged, see `storage_fallback_reason`)
    when an overlay mount does not work under `root` (or `storage_dir`). `extra_config` is
    TOML merged into the generated crio.conf (tables merge, values replace).
    """

    def __init__(
        self,
        root: Path,
        *,
        registries: Iterable[str] = (),
        storage_driver: str = "overlay",
        binary: Path | None = None,
        crictl: Path | None = None,
        extra_config: str = "",
        storage_dir: Path | None = None,
    ):
        self.root = Path(root).resolve()  # as /proc/self/mountinfo shows it
        self._storage_dir = Path(storage_dir).resolve() if storage_dir is not None else None
        self.registries = list(registries)
        self.binary = Path(binary) if binary else bin_path("crio")
        self.crictl_binary = Path(crictl) if crictl else bin_path("crictl")
        self.pinns = bin_path("pinns")
        self.extra_config = extra_config
        if len(os.fsencode(self.socket)) > _SUN_PATH_MAX:
            raise CrioError(f"socket path too long for a unix socket: {self.socket}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_fallback_reason: str | None = None
        self.storage_driver = storage_driver
        if self._storage_dir is not None:
            self._storage_dir.mkdir(parents=True, exist_ok=True)
        if storage_driver == "overlay":
            reason = overlay_unsupported_reason(self._storage_dir or self.root)
            if reason:
                log.warning("CRI-O in %s: using vfs instead of overlay: %s", self.root, reason)
                self.storage_fallback_reason = reason
                self.storage_driver = "vfs"
        self._proc: subprocess.Popen | None = None
        self._run_log_offset = 0
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._write_files()

    # -- paths --------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.root / "crio.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def config_path(self) -> Path:
        return self.root / "crio.conf"

    @property
    def dropin_dir(self) -> Path:
        return self.root / "crio.conf.d"

    @property
    def registries_conf(self) -> Path:
        return self.root / "registries.conf"

    @property
    def registries_conf_dir(self) -> Path:
        """The registries.conf.d drop-in directory (mirrors, as ImageDigestMirrorSets)."""
        return self.root / "registries.conf.d"

    @property
    def auth_file(self) -> Path:
        """CRI-O's `global_auth_file` (a docker config.json, as the kubelet's pull secret on
        a node): where it finds the credentials of a mirror on another host. It need not
        exist."""
        return self.root / "auth.json"

    @property
    def pidfile(self) -> Path:
        """Holds CRI-O's PID while it runs (what a reloader sends SIGHUP to)."""
        return self.root / "crio.pid"

    @property
    def log_path(self) -> Path:
        """CRI-O's stdout and stderr, appended across restarts."""
        return self.root / "crio.log"

    @property
    def storage_root(self) -> Path:
        return self._storage_dir or self.root / "storage"

    @property
    def _mount_roots(self) -> tuple[Path, ...]:
        """Where CRI-O's mounts may be left: its root, and its storage when outside it."""
        storage = self.storage_root
        if storage == self.root or self.root in storage.parents:
            return (self.root,)
        return (self.root, storage)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- configuration ------------------------------------------------------------------

    def _dir(self, *parts: str) -> str:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def render_config(self) -> str:
        """The main crio.conf: every path CRI-O writes to is under `root`."""
        run = self._dir("run")
        conf: dict[str, Any] = {
            "crio": {
                "root": self._dir("storage") if self._storage_dir is None else str(self._storage_dir),
                "runroot": self._dir("run", "storage"),
                "storage_driver": self.storage_driver,
                "log_dir": self._dir("pod-logs"),
                "version_file": f"{run}/version",
                "version_file_persist": f"{self._dir('lib')}/version",
                "clean_shutdown_file": f"{self._dir('lib')}/clean.shutdown",
                "api": {
                    "listen": str(self.socket),
                    "stream_address": "127.0.0.1",
                    "stream_port": "0",
                },
                "runtime": {
                    "log_level": "info",
                    "default_runtime": "crun",
                    "cgroup_manager": "cgroupfs",
                    "conmon_cgroup": "pod",
                    "container_exits_dir": self._dir("run", "exits"),
                    "container_attach_socket_dir": self._dir("run", "attach"),
                    "namespaces_dir": self._dir("run", "ns"),
                    "pinns_path": str(self.pinns),
                    "decryption_keys_path": self._dir("keys"),
                    "hooks_dir": [self._dir("hooks.d")],
                    "cdi_spec_dirs": [self._dir("cdi")],
                    "irqbalance_config_file": "",
                    "irqbalance_config_restore_file": "disable",
                    # else CRI-O needs iptables or nft at start, for pods we never run
                    "disable_hostport_mapping": True,
                    "runtimes": {
                        "crun": {
                            "runtime_path": _system_binary("crun"),
                            "runtime_root": self._dir("run", "crun"),
                            "monitor_path": _system_binary("conmon"),
                            "monitor_cgroup": "pod",
                        }
                    },
                },
                "image": {
                    "global_auth_file": str(self.auth_file),
                    "signature_policy": str(self.root / "policy.json"),
                    "signature_policy_dir": self._dir("policies"),
                    "namespaced_auth_dir": self._dir("auth"),  # created at start
                    "big_files_temporary_dir": self._dir("tmp"),
                },
                "network": {
                    "network_dir": self._dir("cni", "net.d"),
                    "plugin_dirs": [self._dir("cni", "bin")],
                },
                "nri": {"enable_nri": False},
            }
        }
        if self.extra_config:
            _merge(conf, tomlkit.parse(self.extra_config).unwrap())
        return tomlkit.dumps(conf)

    def render_registries_conf(self) -> str:
        doc = tomlkit.document()
        doc["unqualified-search-registries"] = []
        if self.registries:
            doc["registry"] = [{"location": r, "insecure": True} for r in self.registries]
        return tomlkit.dumps(doc)

    def _write_files(self) -> None:
        """(Re)write the configuration. The drop-in directory is created empty and never
        cleared: drop-ins survive restarts, as on a node."""
        self.config_path.write_text(self.render_config())
        self.dropin_dir.mkdir(exist_ok=True)
        self.registries_conf.write_text(self.render_registries_conf())
        self.registries_conf_dir.mkdir(exist_ok=True)
        policy = {"default": [{"type": "insecureAcceptAnything"}]}
        (self.root / "policy.json").write_text(json.dumps(policy) + "\n")
        # CRI-O starts from containers/storage's defaults (storage.conf) before applying
        # crio.conf: point it at our own file so /etc/containers/storage.conf cannot leak in.
        storage = {
            "storage": {
                "driver": self.storage_driver,
                "graphroot": str(self.storage_root),
                "runroot": str(self.root / "run" / "storage"),
            }
        }
        (self.root / "storage.conf").write_text(tomlkit.dumps(storage))
        (self.root / "containers.conf").write_text("")
        (self.root / "crictl.yaml").write_text(
            f"runtime-endpoint: {self.endpoint}\nimage-endpoint: {self.endpoint}\n"
        )

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--config", str(self.config_path),
            "--config-dir", str(self.dropin_dir),
            "--registries-conf", str(self.registries_conf),
            "--registries-conf-dir", str(self.registries_conf_dir),
            "--log-level", "info",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"),
            CONTAINERS_CONF=str(self.root / "containers.conf"),
            TMPDIR=self._dir("tmp"),
        )
        return env

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start CRI-O and return once ListImages answers through its socket.

        Raises `CrioError` with the log tail when CRI-O exits or is not ready within
        `timeout` seconds (then it is killed). 0 means no bound.
        """
        if self.running:
            raise CrioError(f"CRI-O in {self.root} is already running (pid {self.pid})")
        t0 = time.monotonic()
        self._write_files()
        self.socket.unlink(missing_ok=True)  # left by kill(); readiness waits for a new one
        self._run_log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self._env(),
                start_new_session=True,  # a Ctrl-C meant for the tests must not reach it
            )
        _live[self._proc] = self._mount_roots
        self.pidfile.write_text(f"{self._proc.pid}\n")
        deadline = t0 + timeout if timeout > 0 else float("inf")
        last_error = "socket not created"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self.stop()  # unmounts what it left
                raise CrioError(
                    f"CRI-O in {self.root} exited with {rc} while starting;"
                    f" log tail:\n{self.log_tail()}"
                )
            if self.socket.exists():
                try:
                    self.crictl("images", "-q", timeout=2)
                    break
                except CrioError as e:
                    last_error = str(e)
            if time.monotonic() > deadline:
                self.kill()
                self.stop()
                raise CrioError(
                    f"CRI-O in {self.root} not ready after {timeout:g} s ({last_error});"
                    f" log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0
        log.info("CRI-O ready at %s in %.2f s (pid %d)", self.socket, self.start_seconds,
                 self._proc.pid)

    def stop(self, timeout: float = _STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status (None
        when it was not running). Also unmounts what a crashed or killed CRI-O left under
        `root` (containers/storage's private bind mount of `storage/overlay`), so the
        directory can be deleted; calling it after `kill()` only does that."""
        proc, self._proc = self._proc, None
        status = None
        if proc is not None and proc.poll() is None:
            t0 = time.monotonic()
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("CRI-O pid %d ignored SIGTERM for %g s: killing", proc.pid, timeout)
                proc.kill()
                proc.wait()
            self.stop_seconds = time.monotonic() - t0
            status = proc.returncode
        self._forget(proc)
        _unmount_leftovers(*self._mount_roots)
        return status

    def kill(self) -> None:
        """SIGKILL now, as a crash would: no clean-shutdown file, a stale socket and the
        storage mount left in place (the next `start()` copes with both, as on a node;
        `stop()` removes them)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._forget(self._proc)

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def detach(self) -> int | None:
        """Let the running CRI-O outlive this interpreter (it is no longer killed at exit),
        for an environment left running on purpose; returns its pid. Stop it later by pid
        and `unmount_under(root)`."""
        if not self.running:
            return None
        _live.pop(self._proc, None)
        return self._proc.pid

    def _forget(self, proc: subprocess.Popen | None) -> None:
        if proc is not None:
            _live.pop(proc, None)
        self.pidfile.unlink(missing_ok=True)

    def reload(self, wait: float = 5.0) -> list[str]:
        """SIGHUP CRI-O, as `systemctl reload crio` does, and return the reload log lines
        it wrote since. With `wait` > 0, first wait up to `wait` seconds for the reload to
        finish ("Configuration reload completed" or "Unable to reload configuration").

        CRI-O merges SIGHUPs that arrive during a reload; every reload rereads all files.
        """
        if not self.running:
            raise CrioError(f"CRI-O in {self.root} is not running")
        offset = self.log_path.stat().st_size
        os.kill(self._proc.pid, signal.SIGHUP)
        if wait <= 0:
            return []
        deadline = time.monotonic() + wait
        while True:
            lines = self.reload_log_lines(offset)
            if any(RELOAD_COMPLETED in l or RELOAD_FAILED in l for l in lines):
                return lines
            if not self.running:
                raise CrioError(f"CRI-O exited during a reload; log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise CrioError(
                    f"no reload finished {wait:g} s after SIGHUP; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def __enter__(self) -> Crio:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- log ----------------------------------------------------------------------------

    def _log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines CRI-O wrote in its current (or last) run."""
        return "\n".join(self._log_text(self._run_log_offset).splitlines()[-lines:])

    def reload_log_lines(self, offset: int = 0) -> list[str]:
        """CRI-O's log lines about configuration reloads ("Reloading configuration",
        "Set config ...", "Configuration reload completed", "Unable to reload
        configuration"), across every run, from byte `offset` of the log."""
        return [
            line
            for line in self._log_text(offset).splitlines()
            if any(marker in line for marker in _RELOAD_MARKERS)
        ]

    # -- crictl -------------------------------------------------------------------------

    def crictl(self, *args: str, json_output: bool = False, timeout: float = 30.0) -> Any:
        """Run crictl against this instance and return its stdout; with `json_output`,
        add `-o json` (unless given) and return the parsed document. Raises `CrioError`
        with crictl's stderr when it fails."""
        args_list = list(args)
        if json_output and not {"-o", "--output"} & set(args_list):
            args_list += ["-o", "json"]
        cmd = [
            str(self.crictl_binary),
            "--config", str(self.root / "crictl.yaml"),
            "--runtime-endpoint", self.endpoint,
            "--image-endpoint", self.endpoint,
            "--timeout", f"{max(1, round(timeout))}s",
            *args_list,
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired as e:
            raise CrioError(f"crictl {' '.join(args_list)} timed out after {timeout:g} s") from e
        if done.returncode != 0:
            raise CrioError(
                f"crictl {' '.join(args_list)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return json.loads(done.stdout) if json_output else done.stdout

    def images_json(self) -> dict[str, Any]:
        """`crictl images -o json`, parsed: {"images": [{"id", "repoDigests", "pinned", ...}]}."""
        return self.crictl("images", json_output=True)

    def pinned_images(self) -> set[str]:
        """Repository digests (`repo@sha256:...`) of the images CRI-O reports pinned."""
        return {
            digest
            for image in self.images_json().get("images") or []
            if image.get("pinned")
            for digest in image.get("repoDigests") or []
        }

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"Crio({str(self.root)!r}, {self.storage_driver}, {state})"
