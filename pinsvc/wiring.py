"""Putting the agent together from its settings: the one place that knows which adapter
plays which port of core (core/ports.py). Used by the API server (pinsvc/api/server.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import psutil

from pinsvc.adapters.cri import CriClient
from pinsvc.adapters.dropin import Dropin
from pinsvc.adapters.pullsecret import PullSecretFile
from pinsvc.adapters.registries_conf import RegistriesConfFiles, RegistriesPaths, runtime_paths
from pinsvc.adapters.registry.client import RegistryClient
from pinsvc.adapters.reload import Reloader
from pinsvc.adapters.runtime_process import ProcessNotFound, describe, find_process
from pinsvc.config import Settings
from pinsvc.core.agent import Agent
from pinsvc.core.ports import Metrics
from pinsvc.core.state import StateStore

log = logging.getLogger("pinsvc.wiring")


def build_agent(settings: Settings, metrics: Metrics | None = None) -> Agent:
    """The agent with its adapters; `metrics` None = metrics off. Opens nothing yet (the CRI
    channel connects on the first call) but loads the state and cleans the drop-in's temp
    directory, as the agent does at every start, and looks up the runtime's registries
    configuration (`registries_paths`)."""
    socket = cri_socket(settings)
    paths = registries_paths(settings, socket)
    secret = PullSecretFile(settings.registry.pull_secret)
    manifests = RegistryClient(
        insecure_hosts=settings.registry.insecure, credentials=secret.for_endpoint,
        timeout=settings.registry.timeout_seconds,
        max_concurrency=settings.registry.max_concurrency,
        cache_dir=settings.state_dir / "manifests", backoff=settings.registry.backoff,
        certs_dirs=paths.certs_dirs)
    runtime = CriClient(settings.cri_endpoint, timeout=settings.cri_timeout_seconds,
                        connect_wait=settings.cri_connect_wait_seconds,
                        fs_info_backoff=settings.cri_fs_info_backoff)
    dropin = Dropin(settings.dropin_path, settings.dropin_temp_dir, adopt_foreign=settings.dropin.adopt_foreign,
                    crio_binary=settings.dropin.crio_binary, crio_config=settings.dropin.crio_config)
    reloader = Reloader(settings.reload, cri_socket=socket)
    return Agent(settings, runtime=runtime, manifests=manifests, sources=RegistriesConfFiles(paths.conf, paths.dirs),
                 secret=secret, dropin=dropin, reloader=reloader, store=StateStore(settings.state_dir),
                 metrics=metrics)


def cri_socket(settings: Settings) -> Path | None:
    """The socket of the CRI endpoint: what tells CRI-O instances apart."""
    socket = settings.cri_endpoint.removeprefix("unix://").removeprefix("unix:")
    return Path(socket) if socket else None


def registries_paths(settings: Settings, socket: Path | None) -> RegistriesPaths:
    """The registries configuration the runtime reads: each `registry` path setting given
    wins; the others are those of the CRI-O process serving `socket` (or named by the
    reload pidfile), read from its flags and environment (`runtime_paths`); without such a
    process, a runtime's defaults (/etc/containers, logged)."""
    given = settings.registry
    conf, dirs, certs = str(given.registries_conf), given.registries_conf_dirs, given.certs_dirs
    if conf not in ("", ".") and dirs and certs:
        return RegistriesPaths(Path(conf), tuple(map(Path, dirs)), tuple(map(Path, certs)))
    name, pidfile = settings.reload.process_name, str(settings.reload.pidfile)
    try:
        if pidfile not in ("", "."):
            proc, source = psutil.Process(int(Path(pidfile).read_text().split()[0])), f"pidfile {pidfile}"
        else:
            proc, source = find_process(name, socket)
        process = describe(proc)
    except (ProcessNotFound, OSError, ValueError, IndexError, psutil.Error) as e:
        process, source = None, f"no runtime process found ({e}): a runtime's defaults"
    found = runtime_paths(process)
    paths = RegistriesPaths(Path(conf) if conf not in ("", ".") else found.conf,
                            tuple(map(Path, dirs)) or found.dirs, tuple(map(Path, certs)) or found.certs_dirs)
    log.info("registries configuration: %s (%s)", paths,
             source if process is None else f"pid {process.pid}, {source}")
    return paths
