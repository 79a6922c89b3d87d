"""A slow site link for tests and benchmarks: a rate cap that every connection of a
`FaultProxy` shares, and a counter of the bytes that crossed it.

    link = Link(4 * MiB)                         # 4 MiB/s for everything that crosses it
    proxy = FaultProxy(upstream.host, link=link)
    ...
    link.bytes                                   # response body bytes sent so far

The cap is a virtual-time scheduler (GCRA): each piece of a response body reserves the link
for `len(piece) / rate` seconds after the previous reservation, whichever connection made
it, and is sent once its slot comes, with at most `burst` bytes ahead. So concurrent
transfers share the rate instead of each getting it, as on a real link. Only response bodies
count (what flows from the upstream to the site); requests and heads are small.
"""

from __future__ import annotations

import asyncio
import threading
import time

PIECE = 16 * 1024
"""Bytes sent per reservation: small enough that concurrent transfers interleave finely."""


class Link:
    """`rate` bytes per second (0: no cap) shared by every sender; `bytes` counts what was
    sent. Senders may run on any event loop (one reservation lock across threads)."""

    def __init__(self, rate: float = 0.0, *, burst: int = PIECE) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self.burst = burst
        self.bytes = 0
        self._next = 0.0  # monotonic time when the link is free again
        self._lock = threading.Lock()

    def pieces(self, data: bytes) -> list[bytes]:
        """`data` cut into the pieces `send` reserves one by one."""
        if not self.rate:
            return [data]
        return [data[i:i + PIECE] for i in range(0, len(data), PIECE)] or [data]

    async def send(self, size: int) -> None:
        """Waits until `size` more bytes may cross, and counts them."""
        with self._lock:
            self.bytes += size
            if not self.rate:
                return
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + size / self.rate
            wait = self._next - now - self.burst / self.rate
        if wait > 0:
            await asyncio.sleep(wait)

    def reset(self) -> None:
        """Counts from zero again (the cap's schedule is kept)."""
        with self._lock:
            self.bytes = 0
