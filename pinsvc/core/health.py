"""Whether the container runtime answers, as the agent's health and status report it.

A watcher asks the runtime one cheap question (the CRI `Version`, what `crictl version` and
kubelet's runtime check ask) every `interval` seconds, in the background: no request pays
for it, and health follows the runtime as it goes and comes back (a CRI-O restart) within
one interval. The API layer turns what it sees into gRPC health (api/server.py); the state
turns it into the PinnedImageSetsDegraded condition (core/state.py, `RUNTIME_UNREACHABLE`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pinsvc import errors
from pinsvc.core.state import now

log = logging.getLogger("pinsvc.health")


@dataclass(frozen=True)
class RuntimeHealth:
    """What the last check saw: whether the runtime answered; `detail` says why not (or
    which runtime answered); `since` (RFC 3339) is when the runtime was first seen so ("" =
    it answered from the first check on)."""

    reachable: bool
    detail: str = ""
    since: str = ""


Listener = Callable[[RuntimeHealth], Awaitable[None] | None]


class RuntimeWatch:
    """Follows the runtime: `check()` once, `start()` to check every `interval` seconds
    (0 = never), `close()` to stop. `health` is None until the first check. Listeners hear
    of every change (and of the first check)."""

    def __init__(self, probe: Callable[[], Awaitable[str]], *, endpoint: str, interval: float,
                 clock: Callable[[], str] | None = None):
        self.probe = probe
        self.endpoint = endpoint
        self.interval = interval
        self.health: RuntimeHealth | None = None
        self._clock = clock or now
        self._listeners: list[Listener] = []
        self._task: asyncio.Task | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def check(self) -> RuntimeHealth:
        """Asks the runtime once; records and announces a change. Never raises."""
        try:
            version = await self.probe()
            reachable, detail = True, f"{version} at {self.endpoint}" if version else self.endpoint
        except errors.PinsvcError as e:
            reachable, detail = False, str(e)
        except Exception as e:  # noqa: BLE001 - the watcher must outlive any surprise
            log.exception("runtime check failed")
            reachable, detail = False, f"container runtime at {self.endpoint}: check failed: {type(e).__name__}: {e}"
        old = self.health
        if old is not None and old.reachable == reachable:
            if old.detail != detail:  # another reason, same verdict: no transition
                self.health = RuntimeHealth(reachable, detail, old.since)
            return self.health
        self.health = RuntimeHealth(reachable, detail, self._clock() if old is not None or not reachable else "")
        self._log(old, self.health)
        for listener in self._listeners:
            result = listener(self.health)
            if inspect.isawaitable(result):
                await result
        return self.health

    def _log(self, old: RuntimeHealth | None, new: RuntimeHealth) -> None:
        every = f"checked every {self.interval:g}s" if self.interval > 0 else "not checked again"
        if not new.reachable:
            log.warning("%s; health NOT_SERVING until it answers (%s)", new.detail, every)
        elif old is not None:
            log.info("container runtime answers again: %s; health SERVING", new.detail)
        else:
            log.info("container runtime answers: %s", new.detail)

    def start(self) -> None:
        """Checks every `interval` seconds in the running loop (0 = never)."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="pinsvc.runtime-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
