"""The demo's environment, all under one directory: a registry with the sample images, one
real CRI-O and its pinsvc agent per node, and Jaeger when asked.

`start()` brings it up concurrently: the registry and Jaeger first (~0.1 s each; every
CRI-O's configuration names them), then all CRI-Os and agents at once (an agent serves
before its CRI-O does), each in a thread, while the images are pushed. `stop()` stops what runs (agents, CRI-Os with their mounts, registry,
Jaeger) and removes the directory. `keep()` leaves it running instead and writes
`environment.json` (what runs, by pid) and `stop.sh`; `stop_kept(directory)` stops such an
environment from another process and removes its directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from devenv import images as sample_images
from devenv.agent import AgentProcess
from devenv.crio import Crio, mounts_under, unmount_under
from devenv.jaeger import Jaeger
from devenv.paths import REPO
from devenv.registry import Registry

STATE_FILE = "environment.json"
STOP_SCRIPT = "stop.sh"
START_TIMEOUT = 60.0
"""Seconds a CRI-O or an agent may take to start (several start at once on few cores)."""
STOP_TIMEOUT = 10.0
"""Seconds a kept process may take to exit after SIGTERM before it gets SIGKILL."""
_STOP_ORDER = ("agent", "crio", "registry", "jaeger")


class DemoEnvironmentError(RuntimeError):
    """A kept environment cannot be found or stopped; the message names the directory."""


@dataclass
class Node:
    """One demo node: its name, its role labels, its CRI-O and its agent."""

    name: str
    roles: tuple[str, ...]
    crio: Crio
    agent: AgentProcess
    ready_seconds: float | None = None  # until its CRI-O and its agent both serve


class Environment:
    """The peers of the demo under `root`, one node per entry of `nodes` (name -> roles)."""

    def __init__(self, root: Path, nodes: dict[str, tuple[str, ...]], *, jaeger: bool = False,
                 agent_flags: Callable[[str], dict[str, str]] = lambda name: {},
                 jaeger_ui: Path | None = None):
        """`jaeger_ui`: a built Jaeger UI for Jaeger to serve (see `devenv.jaeger.Jaeger`)."""
        self.root = Path(root).resolve()
        self.agent_flags = agent_flags  # node name -> extra `pinsvc agent` flags
        self.layout = dict(nodes)
        self.registry = Registry(self.root / "registry")
        self.jaeger = Jaeger(self.root / "jaeger", ui_assets=jaeger_ui) if jaeger else None
        self.nodes: dict[str, Node] = {}
        self.images: dict[str, str] = {}  # sample image name -> digest reference
        self.image_bytes = 0
        self._cancelled = threading.Event()

    # -- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Everything up; raises the first failure (what did start is stopped by `stop()`).
        An agent does not need its CRI-O to serve, so both start at once."""
        await asyncio.to_thread(self.registry.start)
        if self.jaeger is not None:
            await asyncio.to_thread(self.jaeger.start)
        t0 = time.monotonic()
        for name, roles in self.layout.items():
            self.nodes[name] = self._node(name, roles)
        try:
            await asyncio.gather(self._push(), *(self._start_node(node, t0) for node in self.nodes.values()))
        except BaseException:
            self._cancelled.set()  # threads still starting a peer start nothing more
            raise

    async def _start_node(self, node: Node, t0: float) -> None:
        await asyncio.gather(*(asyncio.to_thread(self._start_peer, peer) for peer in (node.crio, node.agent)))
        node.ready_seconds = time.monotonic() - t0

    def _start_peer(self, peer: Crio | AgentProcess) -> None:
        if not self._cancelled.is_set():
            peer.start(timeout=START_TIMEOUT)

    async def _push(self) -> None:
        workload = sample_images.small_workload()
        refs = await sample_images.push_many(self.registry.host, list(workload.values()))
        self.images = dict(zip(workload, refs))
        self.image_bytes = sum(item.compressed_bytes for item in workload.values())

    def _crio_config(self) -> str:
        if self.jaeger is None:
            return ""
        return ("[crio.tracing]\nenable_tracing = true\n"
                f'tracing_endpoint = "{self.jaeger.otlp_endpoint.removeprefix("http://")}"\n'
                "tracing_sampling_rate_per_million = 0\n")  # spans only for a caller's sampled trace

    def _node(self, name: str, roles: tuple[str, ...]) -> Node:
        crio = Crio(self.root / name / "crio", registries=[self.registry.host], extra_config=self._crio_config())
        flags = {"node-name": name, **self.agent_flags(name)}
        if self.jaeger is not None:
            flags["otlp-endpoint"] = self.jaeger.otlp_endpoint
        return Node(name, roles, crio, AgentProcess(self.root / name / "agent", crio, self.registry, **flags))

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops every peer (agents first, then the CRI-Os, the registry and Jaeger, each
        group at once), unmounts what CRI-O left and removes `root`. Idempotent."""
        with ThreadPoolExecutor(max_workers=max(len(self.nodes), 1) + 2) as pool:
            list(pool.map(lambda node: node.agent.stop(), self.nodes.values()))
            stops = [node.crio.stop for node in self.nodes.values()] + [self.registry.stop]
            if self.jaeger is not None:
                stops.append(self.jaeger.stop)
            list(pool.map(lambda stop: stop(), stops))
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- keep ----------------------------------------------------------------------------

    def keep(self) -> Path:
        """Leaves everything running: records what runs in `environment.json`, writes
        `stop.sh` (runs `stop_kept` on this directory) and returns its path."""
        running = []
        for node in self.nodes.values():
            agent = node.agent.proc
            running.append(("agent", node.name, agent.pid if agent and agent.poll() is None else None))
            running.append(("crio", node.name, node.crio.detach()))
        running.append(("registry", "registry", self.registry.pid))
        if self.jaeger is not None:
            running.append(("jaeger", "jaeger", self.jaeger.pid if self.jaeger.running else None))
        processes = [{"kind": kind, "name": name, "pid": pid, "create_time": psutil.Process(pid).create_time()}
                     for kind, name, pid in running if pid is not None]  # what died is not kept
        state = {"root": str(self.root), "processes": processes}
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        script = self.root / STOP_SCRIPT
        script.write_text("#!/bin/sh\n# Stops the kept pinsvc demo environment and removes this directory.\n"
                          f"cd {shlex.quote(str(REPO))} || exit 1  # devenv is not installed: it runs from the repository\n"
                          f"exec {shlex.quote(sys.executable)} -m devenv.demo --stop {shlex.quote(str(self.root))}\n")
        script.chmod(0o755)
        return script


def stop_kept(directory: Path) -> list[str]:
    """Stops the processes `keep()` recorded under `directory` (only those still running
    with the recorded start time, so a reused pid is never signalled), unmounts what CRI-O
    left there and removes the directory; returns what it did, one line each."""
    directory = Path(directory).resolve()
    state_path = directory / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise DemoEnvironmentError(f"{directory} is not a kept demo environment: no {STATE_FILE} there") from None
    except ValueError as e:
        raise DemoEnvironmentError(f"{state_path} is not valid JSON: {e}") from None
    if Path(state.get("root", "")) != directory:
        raise DemoEnvironmentError(f"{state_path} describes {state.get('root')!r}, not {directory}")
    done = []
    for kind in _STOP_ORDER:
        group = [p for p in state.get("processes", []) if p.get("kind") == kind]
        with ThreadPoolExecutor(max_workers=max(len(group), 1)) as pool:
            done += pool.map(_stop_recorded, group)
    for point in unmount_under(directory):
        done.append(f"unmounted {point}")
    shutil.rmtree(directory, ignore_errors=True)
    done.append(f"removed {directory}" if not directory.exists() else f"could not remove {directory}")
    return done


def _stop_recorded(entry: dict) -> str:
    label = entry["kind"] if entry["name"] == entry["kind"] else f"{entry['kind']} {entry['name']}"
    what = f"{label} (pid {entry['pid']})"
    t0 = time.monotonic()
    try:
        process = psutil.Process(entry["pid"])
        if abs(process.create_time() - entry["create_time"]) > 0.01:
            return f"{what}: not running (pid reused)"
        process.terminate()
        if not _gone(process, STOP_TIMEOUT):
            process.kill()
            _gone(process, STOP_TIMEOUT)
            return f"stopped {what}: killed after {STOP_TIMEOUT:g} s"
    except psutil.NoSuchProcess:
        return f"{what}: not running"
    return f"stopped {what} in {time.monotonic() - t0:.1f} s"


def _gone(process: psutil.Process, timeout: float) -> bool:
    """Whether `process` exited within `timeout` seconds. A zombie counts as exited: the
    process is not our child, and whoever reaps it may take its time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def in_use(directory: Path) -> list[str]:
    """Processes (other than this one) whose command line names `directory` or whose working
    directory is in it, and mounts under it: what a clean stop leaves none of (`pid name`
    or `mount path` per line)."""
    directory = str(Path(directory).resolve())
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "cwd"]):
        info = process.info
        if process.pid == os.getpid():
            continue
        cwd = info.get("cwd") or ""
        if any(directory in arg for arg in info.get("cmdline") or []) or Path(directory) in (Path(cwd), *Path(cwd).parents):
            found.append(f"{info['pid']} {info['name']}")
    return found + [f"mount {point}" for point in mounts_under(Path(directory))]
