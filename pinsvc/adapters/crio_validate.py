"""Validating a drop-in with `crio config` before it is installed: CRI-O itself loads a copy
of the drop-in directory with the candidate in place, so whatever it would refuse at a
reload (bad TOML, a wrong type, another broken file) is refused before anything changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pinsvc.errors import Conflict, StateError, Timeout

log = logging.getLogger("pinsvc.dropin")

VALIDATE_TIMEOUT_SECONDS = 30.0
"""Bound of one `crio config` validation run (it takes ~20 ms)."""
ERROR_TAIL_LINES = 5
"""Lines of crio's stderr quoted when it rejects a candidate."""


class Aborted(Exception):
    """The caller was cancelled; the write stopped before installing anything."""


class CrioValidator:
    """Runs `crio config` on candidate drop-in directories; `binary` '' = no validation."""

    def __init__(self, binary: str = "", config: Path | None = None,
                 timeout_seconds: float = VALIDATE_TIMEOUT_SECONDS) -> None:
        self.binary = binary
        self.config = Path(config) if config is not None and str(config) not in ("", ".") else None
        self.timeout_seconds = timeout_seconds
        self._warned_missing = False

    def _crio(self) -> str | None:
        if not self.binary:
            return None
        found = shutil.which(self.binary)
        if found is None and not self._warned_missing:
            self._warned_missing = True
            log.warning("crio binary %r not found: drop-ins are installed without validation", self.binary)
        return found

    def validate(self, path: Path, content: bytes, entries: Sequence[Path], workdir_in: Path,
                 abort: threading.Event | None = None) -> bool:
        """Runs `crio config` on a copy of the drop-in directory of `path` (its `entries`, in
        CRI-O's read order, without errors) with `path` holding `content`, in a temp directory
        under `workdir_in`. Raises Conflict with crio's message when it fails. False when there
        is no crio binary to ask."""
        crio = self._crio()
        if crio is None:
            return False
        directory = path.parent
        workdir = Path(tempfile.mkdtemp(prefix=f".pinsvc-{path.name}-validate-", dir=workdir_in))
        try:
            candidate_dir = workdir / "crio.conf.d"
            _mirror(directory, [p for p in entries if p != path], candidate_dir)
            (candidate_dir / path.name).write_bytes(content)
            main = self.config
            if main is None or not main.exists():
                # CRI-O skips a missing default main config, but `--config MISSING` is fatal.
                main = workdir / "crio.conf"
                main.write_bytes(b"")
            argv = [crio, "--config", str(main), "--config-dir", str(candidate_dir), "config"]
            returncode, stderr = self._run(argv, path, workdir, abort)
            if returncode != 0:
                message = _crio_error(stderr.decode(errors="replace"))
                message = message.replace(str(candidate_dir / path.name), f"{path} (candidate)")
                message = message.replace(str(candidate_dir), str(directory))
                raise Conflict(f"crio rejected the new {path} (`crio config` exited "
                               f"{returncode}), not installed: {message}")
            return True
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, argv: list[str], path: Path, cwd: Path, abort: threading.Event | None) -> tuple[int, bytes]:
        """(exit code, stderr) of crio, killed on timeout or abort."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=cwd, env=_validation_env())
        except OSError as e:
            raise StateError(f"cannot run {argv[0]} to validate {path}: {e}") from e
        deadline = time.monotonic() + self.timeout_seconds
        with proc:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=0.05)
                    return proc.returncode, stderr
                except subprocess.TimeoutExpired:
                    pass
                if abort is not None and abort.is_set():
                    proc.kill()
                    raise Aborted()
                if time.monotonic() > deadline:
                    proc.kill()
                    raise Timeout(f"validating {path} with {argv[0]} took longer than "
                                  f"{self.timeout_seconds:g} s")


def _mirror(directory: Path, entries: Sequence[Path], target: Path) -> None:
    """Copies `entries` of `directory` to `target`, same relative paths. Symlinks stay
    symlinks (to absolute targets, remapped into `target` when they point into `directory`)
    so that dangling ones and ones to directories fail there the same way. Other special
    files are left out (the drop-in's broken_files reports them)."""
    target.mkdir()
    real_dir = directory.resolve()
    for path in entries:
        dest = target / path.relative_to(directory)
        dest.parent.mkdir(parents=True, exist_ok=True)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            points_to = Path(os.path.realpath(path))
            if points_to.is_relative_to(real_dir):
                points_to = target / points_to.relative_to(real_dir)
            os.symlink(points_to, dest)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(path, dest, follow_symlinks=False)


def _validation_env() -> dict[str, str]:
    """A clean environment: crio reads `CONTAINER_*` variables as flags (e.g.
    CONTAINER_PINNED_IMAGES), which would override the files being validated."""
    return {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C"}


def _crio_error(stderr: str) -> str:
    """The useful part of crio's stderr: its fatal/error messages, else the last lines."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    chosen = [line for line in lines if "level=fatal" in line or "level=error" in line] or lines
    chosen = chosen[-ERROR_TAIL_LINES:]
    out = []
    for line in chosen:
        start = line.find('msg="')
        if start >= 0 and line.endswith('"'):
            line = line[start + 5:-1].replace('\\"', '"')
        out.append(line)
    return " | ".join(out) or "(no output)"
