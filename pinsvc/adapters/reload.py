"""Asking CRI-O to reload its configuration (it rereads every config file on SIGHUP).

Strategies (ReloadSettings.strategy):
- `systemctl`: `systemctl reload <unit>` (the crio unit runs `kill -s HUP $MAINPID`);
- `signal`: SIGHUP to the PID in `pidfile`, or to the one process found by name (with a CRI
  socket given, the one that has that socket open);
- `none`: nothing; CRI-O applies the drop-in at its next reload or restart.

A reload request succeeding does not mean CRI-O applied the file (bad TOML keeps the old
config): callers verify the pins through the CRI afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from pinsvc.adapters.runtime_process import ProcessNotFound, find_process, matches
from pinsvc.errors import InvalidArgument, ReloadFailed
from pinsvc.model import ReloadResult

if TYPE_CHECKING:
    from pinsvc.config import ReloadSettings

log = logging.getLogger("pinsvc.reload")

STRATEGIES = ("systemctl", "signal", "none")
SYSTEMCTL_TIMEOUT_SECONDS = 30.0
"""Bound of one `systemctl reload` (it returns once the unit's ExecReload has run)."""
STDERR_TAIL_CHARS = 2000


class Reloader:
    """Asks the runtime to reload its configuration the way the settings say (core's
    `ConfigReloader` port)."""

    def __init__(self, settings: ReloadSettings, *, cri_socket: Path | None = None,
                 systemctl: str = "systemctl",
                 systemctl_timeout_seconds: float = SYSTEMCTL_TIMEOUT_SECONDS) -> None:
        if settings.strategy not in STRATEGIES:
            raise InvalidArgument(f"reload strategy {settings.strategy!r} is not one of {', '.join(STRATEGIES)}")
        self.settings = settings
        self.cri_socket = Path(cri_socket) if cri_socket is not None else None
        self.systemctl = systemctl
        self.systemctl_timeout_seconds = systemctl_timeout_seconds

    @property
    def pidfile(self) -> Path | None:
        p = self.settings.pidfile
        return Path(p) if str(p) not in ("", ".") else None

    async def reload(self) -> ReloadResult:
        """Asks for the reload. Raises ReloadFailed naming what went wrong."""
        start = time.monotonic()
        strategy = self.settings.strategy
        if strategy == "systemctl":
            detail = await self._systemctl()
        elif strategy == "signal":
            detail = await asyncio.to_thread(self._signal)
        else:
            detail = ("reload strategy is 'none': CRI-O was not asked to reload; "
                      "it applies the drop-in at its next reload or restart")
        result = ReloadResult(strategy, time.monotonic() - start, detail)
        log.info("reload: %s (%.3f s)", detail, result.duration_seconds)
        return result

    # -- systemctl --

    async def _systemctl(self) -> str:
        unit = self.settings.systemd_unit
        argv = [self.systemctl, "reload", unit]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            raise ReloadFailed(f"cannot run `{' '.join(argv)}`: {e}") from e
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.systemctl_timeout_seconds)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ReloadFailed(f"`{' '.join(argv)}` did not finish within "
                               f"{self.systemctl_timeout_seconds:g} s") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            text = stderr.decode(errors="replace").strip()[-STDERR_TAIL_CHARS:] or "(no output)"
            raise ReloadFailed(f"`{' '.join(argv)}` exited {proc.returncode}: {text}")
        return f"`{' '.join(argv)}` succeeded"

    # -- signal --

    def _signal(self) -> str:
        if self.pidfile is not None:
            pid = self._pid_from_pidfile(self.pidfile)
            source = f"from pidfile {self.pidfile}"
        else:
            pid, source = self._find_process()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise ReloadFailed(f"pid {pid} ({source}) is not running") from None
        except PermissionError as e:
            raise ReloadFailed(f"not allowed to signal pid {pid} ({source}): {e}") from e
        return f"SIGHUP sent to pid {pid} ({source})"

    def _pid_from_pidfile(self, pidfile: Path) -> int:
        try:
            text = pidfile.read_text(errors="replace").strip()
        except OSError as e:
            raise ReloadFailed(f"cannot read pidfile {pidfile}: {e.strerror or e}") from e
        if not text:
            raise ReloadFailed(f"pidfile {pidfile} is empty")
        try:
            pid = int(text.split()[0])
        except ValueError:
            raise ReloadFailed(f"pidfile {pidfile} does not hold a pid: {text[:80]!r}") from None
        if pid <= 0:
            raise ReloadFailed(f"pidfile {pidfile} holds an invalid pid {pid}")
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)
        except psutil.NoSuchProcess:
            raise ReloadFailed(f"pid {pid} from pidfile {pidfile} is not running (stale pidfile?)") from None
        except psutil.Error as e:
            raise ReloadFailed(f"cannot inspect pid {pid} from pidfile {pidfile}: {e}") from e
        # A stale pidfile may name a reused pid: SIGHUP kills most processes, so check the name.
        name = self.settings.process_name
        if name and not matches(proc, name):
            raise ReloadFailed(
                f"pid {pid} from pidfile {pidfile} is {_describe(proc)}, not {name!r} "
                f"(stale pidfile?); not signalling it")
        return pid

    def _find_process(self) -> tuple[int, str]:
        if not self.settings.process_name:
            raise ReloadFailed("reload strategy 'signal' needs a pidfile or a process name")
        try:
            proc, source = find_process(self.settings.process_name, self.cri_socket)
        except ProcessNotFound as e:
            raise ReloadFailed(f"{e}: nothing to send SIGHUP to") from None
        return proc.pid, source


def _describe(proc: psutil.Process) -> str:
    try:
        return repr(proc.name())
    except psutil.Error:
        return "an unknown process"
