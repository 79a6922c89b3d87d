"""The warm stage's arithmetic (pure): what to warm, the rate budget, what fits in a window,
and progress with its ETA.

- `Blob`: one blob the site cache must hold, as the nodes will ask for it: on one cache, in
  one repository (distribution links blobs per repository: a layer shared by images of two
  repositories is fetched once per repository).
- `Pacer`: the budget. A pull-through cache fetches a blob from upstream by itself once
  asked (docs/warm.md), at whatever speed the link gives; what the warm stage controls is
  when each fetch starts. The pacer (GCRA: virtual scheduling without burst) starts a blob
  of `size` bytes no earlier than `size / rate` after the previous start's slot, so the
  upstream bytes over any stretch of the warm stay at `rate` on average.
- `fits`: a blob starts only if its slot ends before the window closes (a fetch the cache
  started cannot be stopped), unless it is bigger than a whole opening.
- `Progress` and `finish_time`: bytes done, measured rate, and an ETA that counts the
  closed stretches between openings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pinsvc.warm.window import Windows

WARMING, PAUSED, WARMED, FAILED, WAITING = "Warming", "Paused", "Warmed", "Failed", "Waiting"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*(?:/s)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1000**2,
            "mi": 1024**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3}


@dataclass(frozen=True, order=True)
class Blob:
    """A blob on the cache: `repository` is `cache-host[:port]/path`, as the node asks."""

    repository: str
    digest: str
    size: int

    @property
    def key(self) -> str:
        """`repository@digest`: what the durable state records as warmed."""
        return f"{self.repository}@{self.digest}"


def order(blobs: set[Blob]) -> list[Blob]:
    """The order of the warm: larger blobs first (the ETA settles early), a digest's
    repositories one after another so that a cache which shares blobs across repositories
    serves the later ones from its storage."""
    by_digest: dict[str, list[Blob]] = {}
    for blob in blobs:
        by_digest.setdefault(blob.digest, []).append(blob)
    digests = sorted(by_digest, key=lambda d: (-max(b.size for b in by_digest[d]), d))
    return [b for d in digests for b in sorted(by_digest[d])]


def parse_rate(text: str) -> float:
    """Bytes per second of `20MiB`, `20MiB/s`, `8M`, `500k`, `1000000` (0 = no budget).
    Raises ValueError naming the text."""
    match = _RATE.match(text)
    unit = (match[2] or "").lower() if match else ""
    if match is None or unit not in _FACTORS:
        raise ValueError(f"rate {text!r}: write it as bytes per second, e.g. 20MiB, 8MB or 500KiB")
    return float(match[1]) * _FACTORS[unit]


class Pacer:
    """Starts of upstream transfers at `rate` bytes/s on average (0 = no budget)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = 0.0  # monotonic time at which the next transfer may start

    def wait(self, now: float) -> float:
        """Seconds until a transfer may start (0: now)."""
        return max(self._free_at - now, 0.0) if self.rate else 0.0

    def reserve(self, size: int, now: float) -> float:
        """Books `size` bytes; the monotonic time at which their transfer may start."""
        if not self.rate:
            return now
        start = max(now, self._free_at)
        self._free_at = start + size / self.rate
        return start

    def refund(self, size: int, now: float) -> None:
        """Gives back a booking whose transfer was not needed (the cache had the blob)."""
        if self.rate:
            self._free_at = max(now, self._free_at - size / self.rate)

    def seconds(self, size: int) -> float:
        """How long `size` bytes take at the budget (0 without one)."""
        return size / self.rate if self.rate else 0.0


class LinkModel:
    """When a blob the cache is fetching should be stored (monotonic seconds): the fetches
    queue on a link of `rate` bytes/s (the budget at first, 0: not known), which is then the
    rate measured while fetches ran. `stored` is told when a fetch ended at the latest: a
    look that finds a blob stored comes after the model's expected end, and later still when
    the windows closed meanwhile, so that look's time would lower the measured rate and push
    every next look later (a spiral); the caller passes the expected end, within the last
    look that found the blob missing and the one that found it stored (`Warmer._stored`). The model errs slow and the
    looks late, which cost nothing on the link."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free = 0.0  # when the link should have carried every fetch in flight
        self._inflight = 0
        self._bytes = 0
        self._busy = 0.0  # seconds with a fetch in flight, before `_since`
        self._since = 0.0

    def start(self, size: int, now: float) -> float:
        """A fetch of `size` bytes starts: when it should be stored."""
        if not self._inflight:
            self._since = now
        self._inflight += 1
        if not self.rate:
            return now
        self._free = max(now, self._free) + size / self.rate
        return self._free

    def stored(self, size: int, now: float) -> None:
        """A fetch was found stored (or failed: size 0)."""
        self._inflight = max(self._inflight - 1, 0)
        self._bytes += size
        busy = self._busy + now - self._since
        if not self._inflight:
            self._busy, self._since = busy, now
        if self._bytes and busy > 0:
            self.rate = self._bytes / busy


def fits(now: datetime, seconds: float, windows: Windows) -> bool:
    """Whether a transfer of `seconds` starting `now` ends before the windows close; one
    longer than the whole current opening fits only at its beginning (or never would)."""
    closes = windows.closes_at(now)
    if closes is None or now + timedelta(seconds=seconds) <= closes:
        return True
    opened = windows.opened_at(now)
    return (closes - opened).total_seconds() < seconds and now - opened < timedelta(seconds=1)


ETA_OPENINGS = 200
"""Openings an ETA looks ahead (beyond: unknown). Each costs croniter's arithmetic, and the
ETA is computed at every progress report on the event loop: 10 000 openings of a window of
seconds took 2.8 s of CPU, during which no look at the cache was made."""


def finish_time(now: datetime, remaining: int, rate: float, windows: Windows) -> datetime | None:
    """When `remaining` bytes are moved at `rate` bytes/s, working only while the windows
    are open; None when unknown (no rate, or beyond ETA_OPENINGS openings) or never (the
    windows do not open again)."""
    if remaining <= 0:
        return now
    if rate <= 0:
        return None
    t, left = now, remaining / rate
    for _ in range(ETA_OPENINGS):
        opens = windows.next_open(t)
        if opens is None:
            return None
        closes = windows.closes_at(opens)
        if closes is None or (closes - opens).total_seconds() >= left:
            return opens + timedelta(seconds=left)
        left -= (closes - opens).total_seconds()
        t = closes
    return None


@dataclass
class Progress:
    """Where one warm stands (what pinctl shows, the controller writes, metrics export)."""

    state: str = WAITING
    blobs_total: int = 0
    blobs_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_fetched: int = 0  # of bytes_done, what the cache had to fetch upstream (the rest it held)
    rate: float = 0.0  # measured upstream bytes/s while warming (pauses excluded)
    eta: datetime | None = None
    next_open: datetime | None = None  # while paused
    message: str = ""
    caches: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `Warming: 40.0 of 200.0 MiB (12 of 60 blobs) in 127.0.0.1:5000, 7.9 MiB/s, ETA 22:14:05Z`."""
        line = self.state
        if self.blobs_total or self.state != WAITING:
            line += (f": {self.bytes_done / 2**20:.1f} of {self.bytes_total / 2**20:.1f} MiB "
                     f"({self.blobs_done} of {self.blobs_total} blobs)")
        if self.caches:
            line += " in " + ", ".join(self.caches)
        if self.state == WARMING and self.rate:
            line += f", {self.rate / 2**20:.1f} MiB/s"
        if self.state in (WARMING, PAUSED) and self.eta is not None and self.blobs_total:
            line += f", ETA {_stamp(self.eta)}"
        if self.state in (PAUSED, WAITING):
            line += f"; window closed, opens {_stamp(self.next_open)}" if self.next_open else "; the window does not open again"
        return line + (f"; {self.message}" if self.message else "")


def _stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
