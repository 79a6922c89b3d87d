"""The container runtime's process: which one serves the node's CRI socket, and what it was
started with.

Two adapters need that process: the signal reloader (adapters/reload.py) sends it SIGHUP, and
the registries configuration (adapters/registries_conf.py) reads the files its flags and
environment name, so that the agent resolves mirrors from the very files the runtime uses.
Several CRI-Os may run on one machine (test nodes); the one holding the CRI socket open is
the node's. Reading another process's sockets and environment needs root (or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil


class ProcessNotFound(Exception):
    """No single runtime process matches; the message says what was found instead."""


@dataclass(frozen=True)
class RuntimeProcess:
    """A running runtime process as far as its configuration goes."""

    pid: int
    argv: tuple[str, ...]
    environ: Mapping[str, str] = field(default_factory=dict)
    """Empty when it cannot be read."""
    home: str = ""
    """Its `$HOME`, else its user's home directory ("" when neither can be read)."""

    def flag(self, name: str) -> str | None:
        """The value of `--name VALUE` / `--name=VALUE` (also with one dash, as the runtime's
        command line parser accepts), the last one given; None when absent."""
        value = None
        args = iter(self.argv[1:])
        for arg in args:
            if arg == "--":
                break
            key, eq, rest = arg.lstrip("-").partition("=")
            if arg.startswith("-") and key == name:
                value = rest if eq else next(args, None)
        return value

    def setting(self, name: str, env: str) -> str:
        """A string flag with its environment variable, as the runtime reads it: the flag
        beats the variable; "" when neither is set."""
        return self.flag(name) or self.environ.get(env, "")


def find_process(name: str, cri_socket: Path | None = None) -> tuple[psutil.Process, str]:
    """The process named `name` (its name, executable or argv[0]) and how it was picked:
    the one that has `cri_socket` open, or without a socket the only one. Raises
    ProcessNotFound naming the candidates."""
    if not name:
        raise ProcessNotFound("no process name to look for")
    candidates = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE and matches(proc, name):
                candidates.append(proc)
        except psutil.Error:
            continue
    pids = sorted(p.pid for p in candidates)
    if cri_socket is not None:
        holders = [p for p in candidates if _has_socket(p, cri_socket)]
        if len(holders) == 1:
            return holders[0], f"the {name!r} process with socket {cri_socket} open"
        if not holders:
            raise ProcessNotFound(f"no {name!r} process has socket {cri_socket} open "
                                  f"({name!r} processes: {pid_list(pids)})")
        raise ProcessNotFound(f"several {name!r} processes have socket {cri_socket} open: "
                              f"{pid_list(sorted(p.pid for p in holders))}; set a pidfile")
    if len(candidates) == 1:
        return candidates[0], f"the only {name!r} process"
    if not candidates:
        raise ProcessNotFound(f"no running process named {name!r}")
    raise ProcessNotFound(f"several processes named {name!r}: {pid_list(pids)}; "
                          f"set a pidfile or the CRI socket to pick one")


def describe(proc: psutil.Process) -> RuntimeProcess:
    """The command line, environment and home directory of `proc` (what cannot be read is
    left empty). Raises psutil.Error when the process is gone."""
    argv = tuple(proc.cmdline())
    try:
        environ = dict(proc.environ())
    except psutil.AccessDenied:
        environ = {}
    home = environ.get("HOME", "")
    if not home:
        try:
            home = pwd.getpwuid(proc.uids().real).pw_dir
        except (KeyError, psutil.Error):
            home = ""
    return RuntimeProcess(proc.pid, argv, environ, home)


def matches(proc: psutil.Process, name: str) -> bool:
    """Whether the process is `name`: its name (comm), executable or argv[0] base name."""
    try:
        if proc.name() == name:
            return True
    except psutil.Error:
        pass
    try:
        exe = proc.exe()
        if exe and os.path.basename(exe) == name:
            return True
    except psutil.Error:
        pass
    try:
        cmdline = proc.cmdline()
        return bool(cmdline) and os.path.basename(cmdline[0]) == name
    except psutil.Error:
        return False


def _has_socket(proc: psutil.Process, socket_path: Path) -> bool:
    """Whether the process holds a unix socket bound to `socket_path` (reading other
    processes' sockets needs root)."""
    wanted = {str(socket_path), os.path.realpath(socket_path)}
    try:
        connections = proc.net_connections(kind="unix")
    except psutil.Error:
        return False
    for conn in connections:
        laddr = conn.laddr if isinstance(conn.laddr, str) else ""
        if laddr and (laddr in wanted or os.path.realpath(laddr) in wanted):
            return True
    return False


def pid_list(pids: list[int]) -> str:
    return ", ".join(str(p) for p in pids) if pids else "none"
