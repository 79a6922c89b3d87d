"""One active controller among replicas: leader election on a coordination.k8s.io Lease,
with kubernetes_asyncio's `LeaderElection` and `LeaseLock` (client-go's algorithm: acquire
when the holder has not renewed for the lease duration, renew every retry period, stop
leading when renewals fail for the renew deadline; updates are compare-and-swap on the
Lease's resourceVersion).

What this module adds around the library: the lock's calls are bounded in time and turn
an unreachable API server into a failed attempt (the library expects HTTP errors only), so
a leader that cannot renew steps down instead of crashing; after losing, the controller
campaigns again; on shutdown the Lease is released (holder cleared) so a standby takes over
at once instead of after the lease duration; and a fatal error of the leading work ends
the campaign with that error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from pinsvc.controller.kubeapi import NETWORK_ERRORS
from pinsvc.controller.probes import State
from pinsvc.controller.settings import Leadership

log = logging.getLogger("pinsvc.controller.leader")


class Lock(LeaseLock):
    """A LeaseLock whose calls take at most `timeout` seconds and fail softly; each read
    records in `state.api_error` whether the API server answered it (readiness)."""

    def __init__(self, name: str, namespace: str, identity: str, api: ApiClient, timeout: float, state: State):
        super().__init__(name, namespace, identity, api)
        self.timeout = timeout
        self.state = state

    async def get(self, name, namespace):
        try:
            async with asyncio.timeout(self.timeout):
                found, record = await super().get(name, namespace)
        except NETWORK_ERRORS as e:
            error = ApiException(status=503, reason=f"API server unreachable: {type(e).__name__}: {e}")
            error.body = json.dumps({"code": 503})  # what the election reads from a failed get
            self.state.api_error = f"Lease {namespace}/{name} not read: {error.reason}"
            return False, error
        answered = found or (isinstance(record, ApiException) and record.status == 404)
        self.state.api_error = "" if answered else (
            f"Lease {namespace}/{name} not read: HTTP {getattr(record, 'status', '?')}: {getattr(record, 'reason', record)}")
        return found, record

    async def create(self, name, namespace, election_record) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return await super().create(name, namespace, election_record)
        except NETWORK_ERRORS:
            return False

    async def update(self, name, namespace, updated_record) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return await super().update(name, namespace, updated_record)
        except NETWORK_ERRORS:
            return False

    async def release(self) -> None:
        """Clears the holder when it is us, so a standby acquires at its next try."""
        try:
            async with asyncio.timeout(self.timeout):
                lease = await self.api_instance.read_namespaced_lease(self.name, self.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                await self.api_instance.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released the Lease %s/%s", self.namespace, self.name)
        except (ApiException, *NETWORK_ERRORS) as e:
            log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name,
                        f"HTTP {e.status}: {e.reason}" if isinstance(e, ApiException) else e)


async def run_elected(api: ApiClient, leadership: Leadership, identity: str,
                      work: Callable[[], Awaitable[None]], state: State | None = None) -> None:
    """Campaigns for the Lease and runs `work()` while holding it, again after each loss,
    until cancelled (then the Lease is released) or `work()` fails (its error is raised).
    `state.leading` says whether `work()` runs."""
    state = state or State()
    namespace = leadership.resolved_namespace()
    failed: asyncio.Future = asyncio.get_running_loop().create_future()
    leading: list[asyncio.Task] = []

    async def lead() -> None:
        leading.append(asyncio.current_task())
        log.info("%s leads (Lease %s/%s)", identity, namespace, leadership.lease_name)
        state.leading, state.synced = True, False
        try:
            await work()
        except asyncio.CancelledError:
            log.info("%s stopped leading", identity)
            raise
        except Exception as e:
            if not failed.done():
                failed.set_exception(e)
        finally:
            state.leading, state.synced = False, False

    async def stopped() -> None:
        log.warning("%s lost the Lease %s/%s (could not renew it for %ds)", identity, namespace,
                    leadership.lease_name, leadership.renew_deadline_seconds)

    lock = None
    try:
        while True:
            lock = Lock(leadership.lease_name, namespace, identity, api,
                        timeout=max(leadership.retry_period_seconds, leadership.renew_deadline_seconds / 2),
                        state=state)
            election = LeaderElection(Config(lock, leadership.lease_seconds, leadership.renew_deadline_seconds,
                                             leadership.retry_period_seconds, onstarted_leading=lead,
                                             onstopped_leading=stopped))
            log.info("%s campaigns for the Lease %s/%s", identity, namespace, leadership.lease_name)
            campaign = asyncio.ensure_future(election.run())
            await asyncio.wait({campaign, failed}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                campaign.cancel()
                await _end(leading)
                await lock.release()
                raise failed.exception()
            await _end(leading)  # the library cancelled it; wait until it has cleaned up
            if campaign.exception() is not None:
                log.warning("leader election failed: %s; campaigning again", campaign.exception())
            await asyncio.sleep(leadership.retry_period_seconds)
    finally:
        if lock is not None and not failed.done():
            campaign.cancel()
            await _end(leading)
            await asyncio.shield(lock.release())


async def _end(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()
