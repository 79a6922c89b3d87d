"""Bringing one node's agent to its desired sets, as `pinctl rollout` does for a node:
its status first (a node already there is not applied again, e.g. one a previous leader
finished just before it stopped), then the pre-flight space check, then the Apply, each
call retried on a fresh channel while the agent is unavailable (the rollout's Backoff),
all within the node deadline. One channel per node, kept while this controller leads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from pinsvc_client import PinClient, PinError, pb

from pinsvc.coordinator.rollout import Options, Target, is_current
from pinsvc.retry import retry

log = logging.getLogger("pinsvc.controller.agents")

UPDATED, FAILED, UNAVAILABLE = "Updated", "Failed", "Unavailable"


@dataclass(frozen=True)
class Outcome:
    """How a node's attempt ended: `status` is the agent's last word (None when it could
    not be reached), `applied` whether an Apply was sent."""

    state: str
    status: pb.NodeStatus | None = None
    message: str = ""
    applied: bool = False


class Agents:
    """The agents' channels and the calls the controller makes to them."""

    def __init__(self, connect: Callable[[str, str], PinClient], options: Options):
        self.connect = connect
        self.options = options
        self.gate = asyncio.Semaphore(max(options.concurrency, 1))
        self.clients: dict[str, tuple[str, PinClient]] = {}  # node -> (endpoint, client)
        self.calls = {"GetStatus": 0, "CheckSpace": 0, "Apply": 0}

    async def converge(self, target: Target, started: Callable[[], None] = lambda: None) -> Outcome:
        """Brings the node to `target.sets`; `started()` runs once an Apply is needed (the
        caller then says the node is progressing)."""
        try:
            async with self.gate:  # the deadline counts from the first call, not the wait for a slot
                async with asyncio.timeout(self.options.node_deadline_seconds or None):
                    return await self._converge(target, started)
        except TimeoutError:
            return Outcome(FAILED, message=f"deadline of {self.options.node_deadline_seconds:g}s passed")
        except PinError as e:
            state = UNAVAILABLE if e.retryable else FAILED
            return Outcome(state, e.status, f"{e.code().name}: {e.details()}", applied=e.status is not None)

    async def _converge(self, target: Target, started: Callable[[], None]) -> Outcome:
        status = await self._call(target, "GetStatus", lambda c: c.status())
        if is_current(status, target):
            return Outcome(UPDATED, status, "already at the desired generations")
        started()
        images = target.images
        if self.options.preflight and images:
            try:
                plan = await self._call(target, "CheckSpace", lambda c: c.check_space(images))
            except PinError as e:
                if e.retryable or e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                # Some images cannot be sized (not in the registry...): the sets holding them
                # fail on the node with their own reason; the others can still be pinned.
                log.info("node %s: pre-flight: %s: %s; applying anyway", target.node, e.code().name, e.details())
            else:
                if not plan.fits:
                    return Outcome(FAILED, None, f"pre-flight: {plan.verdict}")
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

    async def _call(self, target: Target, rpc: str, fn):
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

        return await retry(attempt, self.options.backoff, what=f"node {target.node}: {rpc} to {target.endpoint}",
                           logger=log, level=logging.INFO)

    async def forget(self, node: str) -> None:
        """Closes the node's channel (the node is gone)."""
        _, client = self.clients.pop(node, ("", None))
        if client is not None:
            await client.close()

    async def aclose(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close() for _, c in clients), return_exceptions=True)
