"""One retry policy for every loop that tries again: a frozen `Backoff` schedule (a setting
of each topic) and `retry()`, which runs the attempts and logs each failed one.

Whether to retry is a property of the error: `retryable` on pinsvc's errors
(`errors.PinsvcError`) and on the client's `PinError`. A peer that says how long to wait
(HTTP `Retry-After`) sets `retry_after_seconds` on its error: the wait is then at least
that long, and a wait longer than the schedule's cap is not waited for (the attempt is
the last, its error says when to try again).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """When to try again: the wait after failed attempt n (1-based) is
    `initial_seconds x factor^(n-1)`, capped at `max_seconds`, then spread by a random
    +/- `jitter` fraction; `attempts` counts the first try too."""

    initial_seconds: float = field(default=1.0, metadata={"help": "wait before the second attempt (seconds)"})
    factor: float = field(default=2.0, metadata={"help": "growth of the wait per attempt (>= 1)"})
    max_seconds: float = field(default=10.0, metadata={"help": "cap of the wait between attempts (seconds)"})
    jitter: float = field(default=0.2, metadata={"help": "random +/- fraction applied to each wait (0 to 1)"})
    attempts: int = field(default=5, metadata={"help": "attempts in all for a transient failure (1 = no retry)"})

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        try:
            base = min(self.initial_seconds * self.factor ** (attempt - 1), self.max_seconds)
        except OverflowError:  # a huge factor or attempt count: the cap applies long before
            base = self.max_seconds
        return max(0.0, base * (1 + (rng or random).uniform(-self.jitter, self.jitter)))

    def problems(self) -> dict[str, str]:
        """Field -> what it must be, for every field out of range (empty: usable)."""
        checks = {"initial_seconds": (self.initial_seconds >= 0, "must be >= 0"),
                  "factor": (self.factor >= 1, "must be >= 1"),
                  "max_seconds": (self.max_seconds >= 0, "must be >= 0"),
                  "jitter": (0 <= self.jitter <= 1, "must be between 0 and 1"),
                  "attempts": (self.attempts >= 1, "must be >= 1")}
        return {name: rule for name, (ok, rule) in checks.items() if not ok}


def is_retryable(error: BaseException) -> bool:
    """What an error says of itself: `retryable` (pinsvc's errors, the client's PinError)."""
    return getattr(error, "retryable", False) is True


async def retry(attempt: Callable[[int], Awaitable[T]], backoff: Backoff, *, what: str,
                logger: logging.Logger, level: int = logging.WARNING,
                retryable: Callable[[BaseException], bool] = is_retryable,
                on_retry: Callable[[int, Exception, float], None] | None = None,
                sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                rng: random.Random | None = None) -> T:
    """The result of the first successful `attempt(n)`, n = 1, 2, ...; re-raises the
    error of the last attempt: one that is not retryable, or the one of attempt
    `backoff.attempts`. Every failed attempt is logged once, as
    "<what>: attempt n/N failed: <error>; retrying in X.XXs", "...; giving up" (the last
    attempt, or a Retry-After beyond the cap) or "...; not retryable".
    `on_retry(n, error, delay)` runs before each wait (events, span events)."""
    total = max(backoff.attempts, 1)
    n = 0
    while True:
        n += 1
        try:
            return await attempt(n)
        except Exception as error:
            delay = _next_delay(error, n, total, backoff, retryable, rng)
            if delay is None:
                why = "giving up" if n >= total or retryable(error) else "not retryable"
                logger.log(level, "%s: attempt %d/%d failed: %s; %s", what, n, total, error, why)
                raise
            logger.log(level, "%s: attempt %d/%d failed: %s; retrying in %.2fs", what, n, total, error, delay)
            if on_retry is not None:
                on_retry(n, error, delay)
        await sleep(delay)


def _next_delay(error: Exception, n: int, total: int, backoff: Backoff,
                retryable: Callable[[BaseException], bool], rng: random.Random | None) -> float | None:
    """The wait before attempt n + 1, or None when attempt n was the last."""
    if n >= total or not retryable(error):
        return None
    asked = getattr(error, "retry_after_seconds", None) or 0.0
    if asked > backoff.max_seconds:
        return None
    return max(backoff.delay(n, rng), asked)
