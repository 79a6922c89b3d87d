"""Bringing one node's agent to its desired sets, as `pinctl rollout` does for a node:
its status first (a node already there is not applied again, e.g. one a previous leader
finished just before it stopped), then the pre-flight space check, then the Apply, each
call retried on a fresh channel while the agent is unavailable (the rollout's Backoff),
all within the node deadline. One channel per node, kept while this controller leads.

The status and the space check ask and change nothing, so the controller runs them
(`preflight`) for the nodes next in line while the nodes before them apply: when a slot
frees, the next node goes straight to its Apply. A pre-flight older than
`PREFLIGHT_MAX_AGE_SECONDS`, or one the agent could not answer, is asked again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from pinsvc_client import PinClient, PinError, pb

from pinsvc.coordinator.rollout import Options, Target, is_current
from pinsvc.retry import retry

log = logging.getLogger("pinsvc.controller.agents")

UPDATED, FAILED, UNAVAILABLE = "Updated", "Failed", "Unavailable"
PREFLIGHT_MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True)
class Outcome:
    """How a node's attempt ended: `status` is the agent's last word (None when it could
    not be reached), `applied` whether an Apply was sent."""

    state: str
    status: pb.NodeStatus | None = None
    message: str = ""
    applied: bool = False


@dataclass(frozen=True)
class Preflight:
    """What a node's agent said before its Apply: its status, whether that is already the
    target, and why the images do not fit ("" = they fit, or were not checked)."""

    status: pb.NodeStatus
    current: bool
    unfit: str = ""
    at: float = field(default_factory=time.monotonic)

    def fresh(self) -> bool:
        return time.monotonic() - self.at <= PREFLIGHT_MAX_AGE_SECONDS


class Agents:
    """The agents' channels and the calls the controller makes to them."""

    def __init__(self, connect: Callable[[str, str], PinClient], options: Options):
        self.connect = connect
        self.options = options
        self.gate = asyncio.Semaphore(max(options.concurrency, 1))
        self.clients: dict[str, tuple[str, PinClient]] = {}  # node -> (endpoint, client)
        self.calls = {"GetStatus": 0, "CheckSpace": 0, "Apply": 0}

    async def converge(self, target: Target, started: Callable[[], None] = lambda: None,
                       prepared: Preflight | None = None) -> Outcome:
        """Brings the node to `target.sets`; `started()` runs once an Apply is needed (the
        caller then says the node is progressing). `prepared`: its pre-flight, when fresh,
        is not asked again."""
        try:
            async with self.gate:  # the deadline counts from the first call, not the wait for a slot
                async with asyncio.timeout(self.options.node_deadline_seconds or None):
                    return await self._converge(target, started, prepared if prepared and prepared.fresh() else None)
        except TimeoutError:
            return Outcome(FAILED, message=f"deadline of {self.options.node_deadline_seconds:g}s passed")
        except PinError as e:
            state = UNAVAILABLE if e.retryable else FAILED
            return Outcome(state, e.status, f"{e.code().name}: {e.details()}", applied=e.status is not None)

    async def preflight(self, target: Target) -> Preflight | None:
        """The node's status and space check ahead of its slot, each asked once; None when
        the agent did not answer (its attempt asks again, with retries)."""
        try:
            async with self.gate:
                async with asyncio.timeout(self.options.node_deadline_seconds or None):
                    return await self._check(target, dataclasses.replace(self.options.backoff, attempts=1))
        except (TimeoutError, PinError):
            return None

    async def _check(self, target: Target, backoff) -> Preflight:
        status = await self._call(target, "GetStatus", lambda c: c.status(), backoff)
        if is_current(status, target):
            return Preflight(status, True)
        images = target.images
        if self.options.preflight and images:
            try:
                plan = await self._call(target, "CheckSpace", lambda c: c.check_space(images), backoff)
            except PinError as e:
                if e.retryable or e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                # Some images cannot be sized (not in the registry...): the sets holding them
                # fail on the node with their own reason; the others can still be pinned.
                log.info("node %s: pre-flight: %s: %s; applying anyway", target.node, e.code().name, e.details())
            else:
                if not plan.fits:
                    return Preflight(status, False, f"pre-flight: {plan.verdict}")
        return Preflight(status, False)

    async def _converge(self, target: Target, started: Callable[[], None], prepared: Preflight | None) -> Outcome:
        checked = prepared or await self._check(target, self.options.backoff)
        status = checked.status
        if checked.current:
            return Outcome(UPDATED, status, "already at the desired generations")
        started()
        if checked.unfit:
            return Outcome(FAILED, None, checked.unfit)
        final: list[pb.NodeStatus] = []

        async def apply(client: PinClient) -> None:
            final.clear()
            async for event in client.apply(target.specs(status), parallelism=self.options.parallelism):
                if event.WhichOneof("event") == "status":
                    final.append(event.status)

        try:
            await self._call(target, "Apply", apply)
        except PinError as e:
            if final and not e.retryable:
                return Outcome(FAILED, final[-1], f"{e.code().name}: {e.details()}", applied=True)
            raise
        status = final[-1] if final else await self._call(target, "GetStatus", lambda c: c.status())
        if is_current(status, target):
            return Outcome(UPDATED, status, "pinned and verified", applied=True)
        return Outcome(FAILED, status, "the agent did not reach the desired generations", applied=True)

    async def _call(self, target: Target, rpc: str, fn, backoff=None):
        async def attempt(n: int):
            endpoint, client = self.clients.get(target.node, ("", None))
            if client is None or endpoint != target.endpoint:
                if client is not None:
                    await client.close()
                client = self.connect(target.endpoint, target.node)
                self.clients[target.node] = (target.endpoint, client)
            self.calls[rpc] += 1
            try:
                return await fn(client)
            except PinError as e:
                if e.retryable:  # a channel in backoff after a failure would delay the retry: start afresh
                    await self.clients.pop(target.node)[1].close()
                raise

        return await retry(attempt, backoff or self.options.backoff, what=f"node {target.node}: {rpc} to {target.endpoint}",
                           logger=log, level=logging.INFO)

    async def forget(self, node: str) -> None:
        """Closes the node's channel (the node is gone)."""
        _, client = self.clients.pop(node, ("", None))
        if client is not None:
            await client.close()

    async def aclose(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close() for _, c in clients), return_exceptions=True)
