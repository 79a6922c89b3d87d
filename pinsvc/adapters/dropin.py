"""The drop-in file pinsvc manages in CRI-O's drop-in directory: atomic writes, validated
with `crio config` (adapters/crio_validate.py), and the checks of the directory around it.

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
in, validates the candidate directory with `crio config` before installing it, and refuses
to change anything while later files replace its list (`overriding_files`) or files would
break a reload (`broken_files`): `check_conflicts`. The text itself is pinsvc/dropin_format.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pinsvc.adapters.crio_validate import VALIDATE_TIMEOUT_SECONDS, Aborted, CrioValidator
from pinsvc.dropin_format import inspect_dropin, is_managed, render_dropin, sorted_unique
from pinsvc.errors import Conflict, from_os_error
from pinsvc.model import WriteResult

log = logging.getLogger("pinsvc.dropin")

FILE_MODE = 0o644

T = TypeVar("T")


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
    return inspect_dropin(data)


class Dropin:
    """The one drop-in file pinsvc manages (core's `DropinFile` port).

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
        self.validator = CrioValidator(crio_binary, crio_config, validate_timeout_seconds)
        self._lock = asyncio.Lock()

    @property
    def crio_binary(self) -> str:
        return self.validator.binary

    @property
    def crio_config(self) -> Path | None:
        return self.validator.config

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

    def check_conflicts(self) -> None:
        """Refuses, before anything is pulled, what would make the drop-in useless or the
        reload fail: a foreign file at our path, another broken drop-in, a later list."""
        self.check_writable()
        broken = [f"{path}: {why}" for path, why in self.broken_files() if path != self.path]
        if broken:
            raise Conflict("CRI-O could not load its drop-in directory, so pinsvc changes nothing "
                           "until it is fixed: " + "; ".join(broken))
        later = self.overriding_files()
        if later:
            names = ", ".join(str(p) for p in later)
            raise Conflict(
                f"{names} sorts after {self.name} and sets pinned_images, which replaces "
                f"pinsvc's list in CRI-O; remove its pinned_images or rename it to sort first")

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
        refs = sorted_unique(images)
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
                raise Aborted()
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
            return validated
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _validate(self, content: bytes, abort: threading.Event | None) -> bool:
        entries = [path for path, error in crio_read_order(self.directory) if error is None]
        return self.validator.validate(self.path, content, entries, self.temp_dir, abort)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
