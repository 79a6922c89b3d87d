"""Putting the agent together from its settings: the one place that knows which adapter
plays which port of core (core/ports.py). Used by the API server (pinsvc/api/server.py).
"""

from __future__ import annotations

from pathlib import Path

from pinsvc.adapters.cri import CriClient
from pinsvc.adapters.dropin import Dropin
from pinsvc.adapters.pullsecret import PullSecretFile
from pinsvc.adapters.registry.client import RegistryClient
from pinsvc.adapters.reload import Reloader
from pinsvc.config import Settings
from pinsvc.core.agent import Agent
from pinsvc.core.ports import Metrics
from pinsvc.core.state import StateStore


def build_agent(settings: Settings, metrics: Metrics | None = None) -> Agent:
    """The agent with its adapters; `metrics` None = metrics off. Opens nothing yet (the CRI
    channel connects on the first call) but loads the state and cleans the drop-in's temp
    directory, as the agent does at every start."""
    secret = PullSecretFile(settings.registry.pull_secret)
    manifests = RegistryClient(
        insecure_hosts=settings.registry.insecure, credentials=secret.lookup,
        timeout=settings.registry.timeout_seconds,
        max_concurrency=settings.registry.max_concurrency,
        cache_dir=settings.state_dir / "manifests", backoff=settings.registry.backoff)
    runtime = CriClient(settings.cri_endpoint, timeout=settings.cri_timeout_seconds,
                        connect_wait=settings.cri_connect_wait_seconds,
                        fs_info_backoff=settings.cri_fs_info_backoff)
    dropin = Dropin(settings.dropin_path, settings.dropin_temp_dir, adopt_foreign=settings.dropin.adopt_foreign,
                    crio_binary=settings.dropin.crio_binary, crio_config=settings.dropin.crio_config)
    # The signal strategy tells CRI-O instances apart by the socket of the CRI endpoint.
    socket = settings.cri_endpoint.removeprefix("unix://").removeprefix("unix:")
    reloader = Reloader(settings.reload, cri_socket=Path(socket) if socket else None)
    return Agent(settings, runtime=runtime, manifests=manifests, secret=secret, dropin=dropin,
                 reloader=reloader, store=StateStore(settings.state_dir), metrics=metrics)
