"""The warm stage's settings (pinctl's `--warm-*` flags, the controller's): one frozen
dataclass, every field with its unit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinsvc.adapters.registry.manifest import DEFAULT_PLATFORM, Platform


@dataclass(frozen=True)
class WarmSettings:
    registries_conf: Path
    """The nodes' registries.conf: the first mirror of an image is the cache to warm."""
    registries_conf_dirs: tuple[Path, ...] = ()
    """Its drop-in directories (registries.conf.d), in the runtime's order."""
    rate: float = 0.0
    """Upstream budget in bytes/s, averaged over the warm (0 = no budget: the link's speed)."""
    pull_secret: Path | None = None
    """A docker config.json with the caches' credentials (looked up as the runtime does for
    a mirror); None = anonymous."""
    concurrency: int = 4
    """Blobs in flight at once (fetches the cache runs, verifications)."""
    platform: Platform = DEFAULT_PLATFORM
    """The nodes' platform: the manifest of an index the nodes will pull."""
    stall_seconds: float = 600.0
    """A blob the cache was asked to fetch and does not hold after this long fails the warm."""
    timeout_seconds: float = 30.0
    """Bound of each request to a cache (a verification: per read of 64 KiB)."""

    def problems(self) -> list[str]:
        found = []
        if self.rate < 0:
            found.append(f"--warm-rate {self.rate:g}: must be >= 0 (0 = no budget)")
        if not 1 <= self.concurrency <= 64:
            found.append(f"--warm-concurrency {self.concurrency}: must be between 1 and 64")
        if self.stall_seconds <= 0:
            found.append(f"--warm-stall-seconds {self.stall_seconds:g}: must be > 0")
        return found


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]` as a Platform. Raises ValueError naming the text."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {text!r}: write it as os/architecture[/variant], e.g. linux/amd64")
    return Platform(*parts)
