"""The CRI-O drop-in that lists the pinned images (`[crio.image] pinned_images`).

How CRI-O reads its drop-in directory (`--config-dir`), from cri-o `pkg/config/config.go`
`UpdateFromPath` (Go `filepath.Walk`) and checked against crio v1.36.3 `crio config`:
- every entry that is not a directory is read, whatever its name: dotfiles, `*.tmp`, `*~`,
  files without an extension;
- names are sorted byte-wise in each directory, and a subdirectory is walked at its own
  position among its siblings (depth first), so `60-x/a.conf` comes after `50-pinned-images`
  and `40-x/z.conf` before it;
- symlinks are not followed into directories: a symlink to a directory, a dangling symlink
  or a file CRI-O cannot decode makes the whole load fail (at reload CRI-O keeps the old
  config, at the next start it is fatal);
- a list is replaced, not merged: the last file that sets `pinned_images` wins.

So pinsvc writes its temp files outside that directory (same filesystem) and renames them
in, validates the candidate directory with `crio config` before installing it, and reports
later files that replace its list (`overriding_files`) and files that would break a reload
(`broken_files`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomlkit

from pinsvc.errors import Conflict, InvalidArgument, StateError, Timeout, from_os_error

if TYPE_CHECKING:
    from pinsvc.config import Settings

log = logging.getLogger("pinsvc.dropin")

HEADER = "# Managed by pinsvc. Do not edit: changes are overwritten."
"""First line of every drop-in pinsvc writes; `is_managed` looks for it."""
HEADER_HINT = "# To pin images, send them to pinsvc (PinService.Apply) instead of editing this file."
FILE_MODE = 0o644
VALIDATE_TIMEOUT_SECONDS = 30.0
"""Bound of one `crio config` validation run (it takes ~20 ms)."""
ERROR_TAIL_LINES = 5
"""Lines of crio's stderr quoted when it rejects a candidate."""

T = TypeVar("T")


# ---- pure ----------------------------------------------------------------------------------

def render_dropin(images: Iterable[str]) -> str:
    """The drop-in text for `images`: header comment, `[crio.image]`, and `pinned_images` as
    a multi-line array of the sorted unique references. Raises InvalidArgument for a value
    that is not a string or cannot be written as UTF-8."""
    refs = _sorted_unique(images)
    doc = tomlkit.document()
    doc.add(tomlkit.comment(HEADER.removeprefix("# ")))
    doc.add(tomlkit.comment(HEADER_HINT.removeprefix("# ")))
    doc.add(tomlkit.nl())
    # Built at once: Array.append re-indexes the whole array each time (5,000 refs: 3.5 s).
    array = tomlkit.items.Array([tomlkit.item(ref) for ref in refs], tomlkit.items.Trivia(), multiline=True)
    image = tomlkit.table()
    image.add("pinned_images", array)
    crio = tomlkit.table(is_super_table=True)
    crio.add("image", image)
    doc.add("crio", crio)
    return tomlkit.dumps(doc)


def is_managed(content: bytes) -> bool:
    """Whether `content` is a drop-in pinsvc wrote (it starts with the header line)."""
    header = HEADER.encode()
    return content == header or content.startswith(header + b"\n")


def _sorted_unique(images: Iterable[str]) -> list[str]:
    refs = list(images)
    problems = []
    for ref in refs:
        if not isinstance(ref, str):
            problems.append(f"image reference {ref!r} is not a string")
            continue
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"image reference {ref!r} is not valid Unicode")
    if problems:
        raise InvalidArgument(problems)
    return sorted(set(refs))


def crio_read_order(directory: Path) -> list[tuple[Path, OSError | None]]:
    """Every entry under `directory` that CRI-O would read, in the order it reads them
    (Go `filepath.Walk`: byte-wise sorted names, subdirectories walked in place, symlinks not
    followed into directories). An entry that cannot be listed or stat'ed comes with its
    error; CRI-O fails on those too. A missing directory gives [] (CRI-O skips it)."""
    out: list[tuple[Path, OSError | None]] = []
    if not directory.is_dir():
        return out

    def walk(d: Path) -> None:
        try:
            names = sorted(os.listdir(d), key=os.fsencode)
        except OSError as e:
            out.append((d, e))
            return
        for name in names:
            p = d / name
            try:
                st = os.lstat(p)
            except OSError as e:
                out.append((p, e))
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(p)
            else:
                out.append((p, None))

    walk(directory)
    return out


def _order_key(relative: Path) -> tuple[bytes, ...]:
    """Position of a path in CRI-O's read order: walk order is the lexical order of the
    tuples of byte-wise path components."""
    return tuple(os.fsencode(part) for part in relative.parts)


def inspect_dropin_file(path: Path) -> tuple[bool, str | None]:
    """(sets `crio.image.pinned_images`, why CRI-O would fail to load it or None).

    Only regular files (or symlinks to them) are read: a FIFO would block."""
    try:
        st = os.stat(path)
    except OSError as e:
        return False, f"cannot be read: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return False, "is a symlink to a directory (CRI-O does not descend into it and fails reading it)"
    if not stat.S_ISREG(st.st_mode):
        return False, "is not a regular file (CRI-O would try to read it)"
    try:
        data = path.read_bytes()
    except OSError as e:
        return False, f"cannot be read: {e.strerror or e}"
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        return False, f"is not UTF-8: {e}"
    except tomllib.TOMLDecodeError as e:
        return False, f"is not valid TOML: {e}"
    crio = doc.get("crio")
    if crio is None:
        return False, None
    if not isinstance(crio, dict):
        return False, "sets `crio` to a value that is not a table"
    image = crio.get("image")
    if image is None:
        return False, None
    if not isinstance(image, dict):
        return False, "sets `crio.image` to a value that is not a table"
    if "pinned_images" not in image:
        return False, None
    value = image["pinned_images"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return True, f"sets crio.image.pinned_images to {type(value).__name__} {value!r:.80}, not a list of strings"
    return True, None


# ---- I/O -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteResult:
    changed: bool
    """The file at the drop-in path was written or removed."""
    removed: bool
    """The file was removed (empty list)."""
    sha256: str
    """Hex SHA-256 of the drop-in content now in place ('' when there is none of ours)."""
    previous: bytes | None
    """The bytes at the drop-in path before the call (None = no file), for `restore`."""
    validated: bool = False
    """The candidate was accepted by `crio config` before it was installed."""


class Dropin:
    """The one drop-in file pinsvc manages.

    Writes only `path` and inside `temp_dir` (temp files, and the candidate directory for
    validation, both removed on every path out). Calls are serialized per instance."""

    def __init__(self, path: Path, temp_dir: Path, *, adopt_foreign: bool = False,
                 crio_binary: str = "", crio_config: Path | None = None,
                 validate_timeout_seconds: float = VALIDATE_TIMEOUT_SECONDS) -> None:
        self.path = Path(path)
        self.directory = self.path.parent
        self.name = self.path.name
        self.temp_dir = Path(temp_dir)
        self.adopt_foreign = adopt_foreign
        self.crio_binary = crio_binary
        self.crio_config = Path(crio_config) if crio_config is not None and str(crio_config) not in ("", ".") else None
        self.validate_timeout_seconds = validate_timeout_seconds
        self._lock = asyncio.Lock()
        self._warned_no_crio = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Dropin:
        d = settings.dropin
        return cls(settings.dropin_path, settings.dropin_temp_dir, adopt_foreign=d.adopt_foreign,
                   crio_binary=d.crio_binary, crio_config=d.crio_config)

    # -- reading --

    def read(self) -> bytes | None:
        """The current bytes at the drop-in path, None when there is no file."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def check_writable(self) -> None:
        """Raises Conflict when pinsvc must not (or cannot safely) write the drop-in."""
        if not self.directory.is_dir():
            raise Conflict(f"CRI-O drop-in directory {self.directory} does not exist or is not a directory")
        if self.path.is_dir():
            raise Conflict(f"{self.path} is a directory; pinsvc needs a plain file there")
        current = self.read()
        if current is not None and not is_managed(current) and not self.adopt_foreign:
            raise Conflict(
                f"{self.path} exists and was not written by pinsvc; refusing to overwrite it "
                f"(move it away, or run pinsvc with --dropin-adopt-foreign to take it over)")
        self._check_temp_dir()

    def _check_temp_dir(self) -> None:
        if not self.temp_dir.is_dir():
            raise Conflict(f"temp directory {self.temp_dir} for the drop-in does not exist or is not a directory")
        temp = self.temp_dir.resolve()
        directory = self.directory.resolve()
        if temp == directory or temp.is_relative_to(directory):
            raise Conflict(
                f"temp directory {self.temp_dir} is inside the CRI-O drop-in directory {self.directory}: "
                f"CRI-O reads every file there, temp files included; use a directory outside it "
                f"on the same filesystem")
        if os.stat(temp).st_dev != os.stat(directory).st_dev:
            raise Conflict(
                f"temp directory {self.temp_dir} is not on the same filesystem as {self.directory}: "
                f"the drop-in could not be renamed into place atomically")

    def overriding_files(self) -> list[Path]:
        """Files CRI-O reads after ours that set `crio.image.pinned_images` (and parse): the
        last of them replaces our list. Files that fail to load are in `broken_files`."""
        ours = _order_key(Path(self.name))
        out = []
        for path, error in crio_read_order(self.directory):
            if error is not None or path == self.path:
                continue
            if _order_key(path.relative_to(self.directory)) <= ours:
                continue
            sets, problem = inspect_dropin_file(path)
            if sets and problem is None:
                out.append(path)
        return out

    def broken_files(self) -> list[tuple[Path, str]]:
        """Entries of the drop-in directory (ours included) that would make CRI-O's config
        load fail, with the reason. Finds TOML and `pinned_images` type errors only: other
        wrong values are caught by the `crio config` validation in `write`."""
        out = []
        for path, error in crio_read_order(self.directory):
            if error is not None:
                out.append((path, f"cannot be read: {error.strerror or error}"))
                continue
            _, problem = inspect_dropin_file(path)
            if problem is not None:
                out.append((path, problem))
        return out

    def remove_leftovers(self) -> list[Path]:
        """Removes temp files and validation directories a killed pinsvc left in temp_dir
        (`.pinsvc-<name>-*`); returns what was removed. Call at startup, not while writing."""
        removed = []
        try:
            entries = list(self.temp_dir.glob(f".pinsvc-{self.name}-*"))
        except OSError:
            return removed
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        if removed:
            log.info("removed leftovers of an interrupted drop-in write: %s", ", ".join(map(str, removed)))
        return removed

    # -- writing --

    async def write(self, images: Iterable[str]) -> WriteResult:
        """Makes the drop-in list exactly `images` (sorted, unique); an empty list removes our
        file. Writes nothing when the bytes are already right. Raises Conflict when the path
        holds a foreign file (unless adopt_foreign), when the temp dir is unfit, or when
        `crio config` rejects the candidate; the old file is then left as it was."""
        refs = _sorted_unique(images)
        content = render_dropin(refs).encode()
        async with self._lock:
            try:
                if not refs:
                    return await _in_thread(self._remove_sync)
                abort = threading.Event()
                return await _in_thread(self._write_sync, content, abort, abort=abort)
            except OSError as e:
                raise from_os_error(f"the drop-in {self.path}", e) from e

    async def restore(self, previous: bytes | None) -> None:
        """Puts `previous` (a WriteResult.previous) back atomically, or removes the file when
        it is None. No validation: it is what was there before."""
        async with self._lock:
            try:
                await _in_thread(self._restore_sync, previous)
            except OSError as e:
                raise from_os_error(f"the drop-in {self.path} (restoring the previous one)", e) from e

    def _write_sync(self, content: bytes, abort: threading.Event) -> WriteResult:
        self.check_writable()
        current = self.read()
        digest = hashlib.sha256(content).hexdigest()
        if current == content:
            return WriteResult(changed=False, removed=False, sha256=digest, previous=current)
        validated = self._install(content, validate=True, abort=abort)
        log.info("wrote %s (sha256 %s)%s", self.path, digest, " after crio validation" if validated else "")
        return WriteResult(changed=True, removed=False, sha256=digest, previous=current, validated=validated)

    def _remove_sync(self) -> WriteResult:
        current = self.read()
        if current is None:
            return WriteResult(changed=False, removed=False, sha256="", previous=None)
        if not is_managed(current) and not self.adopt_foreign:
            log.warning("%s was not written by pinsvc; leaving it in place (nothing of ours to remove)", self.path)
            return WriteResult(changed=False, removed=False, sha256="", previous=current)
        self._unlink_and_sync()
        log.info("removed %s (no images to pin)", self.path)
        return WriteResult(changed=True, removed=True, sha256="", previous=current)

    def _restore_sync(self, previous: bytes | None) -> None:
        current = self.read()
        if current == previous:
            return
        if previous is None:
            self._unlink_and_sync()
        else:
            self._check_temp_dir()
            self._install(previous, validate=False)
        log.info("restored the previous %s", self.path)

    def _unlink_and_sync(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        _fsync_dir(self.directory)

    def _install(self, content: bytes, *, validate: bool, abort: threading.Event | None = None) -> bool:
        """Temp file in temp_dir -> fsync -> 0644 -> (validate) -> rename -> fsync dir.
        Returns whether crio validated it. The temp file never outlives the call. When
        `abort` is set (the caller was cancelled) before the rename, nothing is installed."""
        tmp = self.temp_dir / f".pinsvc-{self.name}-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            validated = self._validate(content, abort) if validate else False
            if abort is not None and abort.is_set():
                raise _Aborted()
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
            return validated
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    # -- validation --

    def _crio(self) -> str | None:
        if not self.crio_binary:
            return None
        found = shutil.which(self.crio_binary)
        if found is None and not self._warned_no_crio:
            self._warned_no_crio = True
            log.warning("crio binary %r not found: drop-ins are installed without validation", self.crio_binary)
        return found

    def _validate(self, content: bytes, abort: threading.Event | None = None) -> bool:
        """Runs `crio config` on a copy of the drop-in directory with ours replaced by
        `content`. Raises Conflict with crio's message when it fails. False when there is
        no crio binary to ask."""
        crio = self._crio()
        if crio is None:
            return False
        workdir = Path(tempfile.mkdtemp(prefix=f".pinsvc-{self.name}-validate-", dir=self.temp_dir))
        try:
            candidate_dir = workdir / "crio.conf.d"
            self._mirror(candidate_dir)
            (candidate_dir / self.name).write_bytes(content)
            main = self.crio_config
            if main is None or not main.exists():
                # CRI-O skips a missing default main config, but `--config MISSING` is fatal.
                main = workdir / "crio.conf"
                main.write_bytes(b"")
            argv = [crio, "--config", str(main), "--config-dir", str(candidate_dir), "config"]
            returncode, stderr = self._run_crio(argv, workdir, abort)
            if returncode != 0:
                message = _crio_error(stderr.decode(errors="replace"))
                message = message.replace(str(candidate_dir / self.name), f"{self.path} (candidate)")
                message = message.replace(str(candidate_dir), str(self.directory))
                raise Conflict(f"crio rejected the new {self.path} (`crio config` exited "
                               f"{returncode}), not installed: {message}")
            return True
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_crio(self, argv: list[str], cwd: Path, abort: threading.Event | None) -> tuple[int, bytes]:
        """(exit code, stderr) of crio, killed on timeout or abort."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=cwd, env=_validation_env())
        except OSError as e:
            raise StateError(f"cannot run {argv[0]} to validate {self.path}: {e}") from e
        deadline = time.monotonic() + self.validate_timeout_seconds
        with proc:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=0.05)
                    return proc.returncode, stderr
                except subprocess.TimeoutExpired:
                    pass
                if abort is not None and abort.is_set():
                    proc.kill()
                    raise _Aborted()
                if time.monotonic() > deadline:
                    proc.kill()
                    raise Timeout(f"validating {self.path} with {argv[0]} took longer than "
                                  f"{self.validate_timeout_seconds:g} s")

    def _mirror(self, target: Path) -> None:
        """Copies what CRI-O would read from the drop-in directory to `target`, same relative
        paths. Symlinks stay symlinks (to absolute targets, remapped into `target` when they
        point into the drop-in directory) so that dangling ones and ones to directories fail
        there the same way. Other special files are left out (broken_files reports them)."""
        target.mkdir()
        real_dir = self.directory.resolve()
        for path, error in crio_read_order(self.directory):
            if error is not None or path == self.path:
                continue
            dest = target / path.relative_to(self.directory)
            dest.parent.mkdir(parents=True, exist_ok=True)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                points_to = Path(os.path.realpath(path))
                if points_to.is_relative_to(real_dir):
                    points_to = target / points_to.relative_to(real_dir)
                os.symlink(points_to, dest)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(path, dest, follow_symlinks=False)


class _Aborted(Exception):
    """The caller was cancelled; the write stopped before installing anything."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


async def _in_thread(fn: Callable[..., T], *args: Any, abort: threading.Event | None = None) -> T:
    """Runs `fn` in a worker thread. When the caller is cancelled, sets `abort` (which `fn`
    checks before it installs anything) and still waits for the thread to finish, so that no
    file operation runs on behind the caller's back and the instance lock stays held
    meanwhile; then re-raises the cancellation."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if abort is not None:
            abort.set()
        try:
            await future
        except BaseException:  # noqa: BLE001 - the cancellation wins
            pass
        raise
