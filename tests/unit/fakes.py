"""Fakes of the I/O peers core depends on (pinsvc/core/ports.py), for unit tests of pure
logic; the real ones are exercised in tests/e2e."""

from __future__ import annotations

import asyncio
import tomllib
from collections import Counter
from pathlib import Path

from pinsvc import config, errors
from pinsvc.adapters.dropin import Dropin
from pinsvc.core.agent import Agent
from pinsvc.core.state import StateStore
from pinsvc.mirrors.config import RegistriesConfig
from pinsvc.model import FsUsage, ReloadResult, RuntimeImage

BLOCK = "block"  # a script step: the pull hangs until cancelled


class FakeRuntime:
    """The image runtime (ports.ImageRuntime) and its reloader (ports.ConfigReloader).

    Images in `present` are there (a pull that succeeds adds one); `loaded` are the pins
    CRI-O loaded from the drop-in at `dropin_path` at its last reload. Pulls of images in
    `missing` fail as the registry would; every other pull first waits for `gate` (when set)
    and fails with `pull_error` (when set). A script per image lists
    the steps of its successive pulls: a float sleeps that long and succeeds, an exception is
    raised, (delay, exc) sleeps then raises, BLOCK hangs until cancelled, an asyncio.Event is
    waited for; without a script a pull takes `delay`."""

    def __init__(self, dropin_path: Path | None = None, *, present=(), delay=0.0, present_delay=0.0,
                 cancel_delay=0.0, **scripts):
        self.dropin_path = dropin_path
        self.present: set[str] = set(present)
        self.loaded: set[str] = set()
        self.delay, self.present_delay, self.cancel_delay = delay, present_delay, cancel_delay
        self.scripts = {image: list(steps) for image, steps in scripts.items()}
        self.gate: asyncio.Event | None = None
        self.pull_error: Exception | None = None
        self.missing: set[str] = set()
        self.pulls: list[str] = []
        self.checks: Counter[str] = Counter()
        self.active = self.max_active = self.checking = self.max_checking = 0
        self.active_per_image: Counter[str] = Counter()
        self.max_per_image = 0
        self.cancelled: list[str] = []
        self.stopped: list[str] = []
        self.started: dict[str, asyncio.Event] = {}
        self.reloads = 0
        self.down = False  # the runtime does not answer Version
        self.endpoint = "unix:///fake/crio.sock"

    @property
    def calls(self) -> Counter[str]:
        """Pulls per image."""
        return Counter(self.pulls)

    def started_event(self, image: str) -> asyncio.Event:
        return self.started.setdefault(image, asyncio.Event())

    # ---- the image service ---------------------------------------------------------------

    async def list_images(self) -> list[RuntimeImage]:
        return [RuntimeImage(id=i[-12:], repo_digests=(i,), pinned=i in self.loaded) for i in sorted(self.present)]

    async def image_status(self, image: str) -> RuntimeImage | None:
        return RuntimeImage(id=image[-12:], repo_digests=(image,)) if image in self.present else None

    async def pull(self, image: str, credentials=None) -> str:
        self.pulls.append(image)
        if image in self.missing:
            raise errors.ImageNotFound(f"{image}: manifest unknown")
        self.active += 1
        self.active_per_image[image] += 1
        self.max_active = max(self.max_active, self.active)
        self.max_per_image = max(self.max_per_image, self.active_per_image[image])
        self.started_event(image).set()
        script = self.scripts.get(image)
        step = script.pop(0) if script else self.delay
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.pull_error is not None:
                raise self.pull_error
            await self._run(step)
        except asyncio.CancelledError:
            self.cancelled.append(image)
            if self.cancel_delay:  # like a real CRI call, stopping takes a while
                await asyncio.sleep(self.cancel_delay)
            self.stopped.append(image)
            raise
        finally:
            self.active -= 1
            self.active_per_image[image] -= 1
        self.present.add(image)
        return image

    @staticmethod
    async def _run(step) -> None:
        if step == BLOCK:
            await asyncio.Event().wait()
        elif isinstance(step, asyncio.Event):
            await step.wait()
        elif isinstance(step, BaseException):
            await asyncio.sleep(0)
            raise step
        elif isinstance(step, tuple):
            await asyncio.sleep(step[0])
            raise step[1]
        else:
            await asyncio.sleep(step)

    async def is_present(self, image: str) -> bool:
        """A presence check for the puller alone (counted in `checks`); "broken-check" fails."""
        self.checks[image] += 1
        self.checking += 1
        self.max_checking = max(self.max_checking, self.checking)
        try:
            await asyncio.sleep(self.present_delay)
            if image == "broken-check":
                raise errors.RuntimeUnavailable("crio socket does not answer")
            return image in self.present
        finally:
            self.checking -= 1

    async def version(self) -> str:
        if self.down:
            raise errors.RuntimeUnavailable(f"container runtime at {self.endpoint} is not reachable (Version): "
                                            "failed to connect to all addresses")
        return "fake 1.0"

    async def image_fs(self) -> list[FsUsage]:
        return [FsUsage(str(self.dropin_path.parent), 0)]

    async def image_diff_ids(self, image: str) -> tuple[str, ...]:
        return ()

    async def close(self) -> None:
        pass

    # ---- the reloader --------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        self.reloads += 1
        try:
            doc = tomllib.loads(self.dropin_path.read_text())
            self.loaded = set(doc.get("crio", {}).get("image", {}).get("pinned_images", []))
        except (FileNotFoundError, tomllib.TOMLDecodeError):
            self.loaded = set()
        return ReloadResult("fake", 0.0, "reloaded")


class FakeManifests:
    """A manifest source: `sized` says what each image gets (a SizedImage or an error);
    images not in it are never asked (the space check is off)."""

    def __init__(self, sized=None):
        self.sized = dict(sized or {})
        self.asked: list = []

    async def many(self, wanted, *, diff_ids=False, timeout=None):
        self.asked.append((list(wanted), diff_ids))
        return {ref: self.sized[str(ref)] for ref in wanted}

    async def cached_layers(self, digests):
        return {}

    async def aclose(self) -> None:
        pass


class NoMirrors:
    """A registries configuration without any [[registry]] table."""

    def current(self) -> RegistriesConfig:
        return RegistriesConfig()


class NoSecret:
    def lookup(self, ref) -> None:
        return None


def agent_settings(tmp_path: Path, drift_interval: float = 0.0) -> config.Settings:
    """Settings of an agent on the fakes: state and drop-in under tmp_path, no space check,
    no crio validation, short verification, one pull attempt."""
    directory = tmp_path / "crio.conf.d"
    directory.mkdir(exist_ok=True)
    return config.build({
        (None, "state_dir"): str(tmp_path / "state"),
        ("dropin", "directory"): str(directory), ("dropin", "temp_dir"): str(tmp_path),
        ("dropin", "crio_binary"): "", ("space", "enabled"): False,
        ("verify", "timeout_seconds"): 0.5, ("verify", "poll_interval_seconds"): 0.01,
        ("verify", "drift_interval_seconds"): drift_interval, ("pull", "max_attempts"): 1})


def fake_agent(settings: config.Settings, runtime: FakeRuntime, metrics=None, manifests=None) -> Agent:
    """An agent on `runtime` (its reloader too) and a real drop-in in a temp directory."""
    return Agent(settings, runtime=runtime, manifests=manifests or FakeManifests(), sources=NoMirrors(),
                 secret=NoSecret(),
                 dropin=Dropin(settings.dropin_path, settings.dropin_temp_dir), reloader=runtime,
                 store=StateStore(settings.state_dir), metrics=metrics)
