"""The controller's settings: frozen dataclasses per topic, every field with a unit. The
rollout rules themselves are the coordinator's (`rollout.Options`: max-parallel, canary,
abort-after, node deadline, agent retries, concurrency, parallelism, pre-flight)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from pinsvc.coordinator.rollout import DEFAULT_PORT, Options
from pinsvc.retry import Backoff
from pinsvc.warm.settings import WarmSettings


@dataclass(frozen=True)
class Leadership:
    """Leader election on a coordination.k8s.io Lease (client-go's defaults, in seconds)."""

    lease_name: str = "pinsvc-controller"
    namespace: str = ""  # "" = POD_NAMESPACE, else "pinsvc"
    identity: str = ""  # "" = POD_NAME or the host name, plus a random suffix
    lease_seconds: int = 15  # a standby takes over this long after the leader's last renewal
    renew_deadline_seconds: int = 10  # the leader stops leading when it could not renew for this long
    retry_period_seconds: int = 2  # between attempts to acquire or renew

    def resolved_namespace(self) -> str:
        return self.namespace or os.environ.get("POD_NAMESPACE") or "pinsvc"

    def resolved_identity(self) -> str:
        if self.identity:
            return self.identity
        return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"

    def problems(self) -> list[str]:
        """What kubernetes_asyncio's election refuses, said with our flags' names."""
        found = []
        if self.retry_period_seconds < 1:
            found.append(f"--retry-period {self.retry_period_seconds}: must be >= 1")
        if self.renew_deadline_seconds <= 1.2 * self.retry_period_seconds:
            found.append(f"--renew-deadline {self.renew_deadline_seconds}: must be > 1.2 x --retry-period")
        if self.lease_seconds <= self.renew_deadline_seconds:
            found.append(f"--lease-duration {self.lease_seconds}: must be > --renew-deadline")
        return found


@dataclass(frozen=True)
class Settings:
    kubeconfig: str = ""
    context: str = ""
    port: int = DEFAULT_PORT  # agents on each node's InternalIP, unless annotated or in `endpoints`
    endpoints: dict[str, str] = field(default_factory=dict)  # node -> agent endpoint overrides
    rollout: Options = Options(abort_after=0)
    failure_backoff: Backoff = Backoff(initial_seconds=5.0, factor=2.0, max_seconds=300.0, jitter=0.2, attempts=1)
    """Waits before a failed node is tried again (only `delay()` is used: it is retried for
    as long as it fails)."""
    progress_after_seconds: float = 2.0
    """An Apply running this long gets Progressing=True written (a shorter one is written
    once, when it ends: one status write per node instead of two)."""
    status_interval_seconds: float = 1.0  # at most one pool status write per pool this often
    debounce_seconds: float = 0.02  # events this close together make one reconcile pass
    leadership: Leadership = Leadership()
    http_address: str = ":8080"  # /healthz, /readyz, /metrics ('' = off)
    warm: WarmSettings | None = None  # the warm stage before each pool's nodes (docs/warm.md); None = none
