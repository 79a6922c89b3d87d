"""Reload strategies against real processes: `python -c` children that trap SIGHUP."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinsvc.config import ReloadSettings
from pinsvc.adapters.reload import Reloader
from pinsvc.errors import InvalidArgument, ReloadFailed

CHILD = r"""
import ctypes, os, signal, socket, sys, time
out, name, sock = sys.argv[1:4]
def on_hup(signum, frame):
    with open(out, "a") as f:
        f.write("HUP\n")
signal.signal(signal.SIGHUP, on_hup)
if name:
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the comm psutil reads
if sock:
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.listen()
open(out + ".ready", "w").close()
while True:
    signal.pause()
"""


class Child:
    def __init__(self, proc: subprocess.Popen, out: Path) -> None:
        self.proc = proc
        self.out = out
        self.pid = proc.pid

    def hups(self) -> int:
        return self.out.read_text().count("HUP") if self.out.exists() else 0

    async def wait_hups(self, n: int = 1, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.hups() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.hups()


@pytest.fixture
def spawn(tmp_path):
    children: list[Child] = []

    def start(name: str = "", sock: Path | None = None) -> Child:
        out = tmp_path / f"child-{len(children)}"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), name, str(sock or "")])
        child = Child(proc, out)
        children.append(child)
        deadline = time.monotonic() + 10
        while not Path(f"{out}.ready").exists():
            assert proc.poll() is None, "child died"
            assert time.monotonic() < deadline, "child did not start"
            time.sleep(0.01)
        return child

    yield start
    for child in children:
        child.proc.kill()
        child.proc.wait()


def signal_settings(**kw) -> ReloadSettings:
    return ReloadSettings(strategy="signal", **kw)


def python_name() -> str:
    return os.path.basename(sys.executable)


def unique_name() -> str:
    return "pst" + secrets.token_hex(4)  # < 15 chars: fits in comm untruncated


async def test_signal_via_pidfile(spawn, tmp_path) -> None:
    child = spawn()
    pidfile = tmp_path / "crio.pid"
    pidfile.write_text(f"{child.pid}\n")
    result = await Reloader(signal_settings(pidfile=pidfile, process_name=python_name())).reload()
    assert await child.wait_hups() == 1
    assert result.strategy == "signal" and str(child.pid) in result.detail and str(pidfile) in result.detail
    assert 0 <= result.duration_seconds < 5


async def test_dead_pid_is_a_clear_error(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pidfile = tmp_path / "crio.pid"
    pidfile.write_text(str(proc.pid))
    with pytest.raises(ReloadFailed) as e:
        await Reloader(signal_settings(pidfile=pidfile)).reload()
    assert str(proc.pid) in str(e.value) and str(pidfile) in str(e.value) and "not running" in str(e.value)


@pytest.mark.parametrize("content", [None, "", "  \n", "crio\n", "-5", "0"])
async def test_bad_pidfile_is_named(tmp_path, content) -> None:
    pidfile = tmp_path / "crio.pid"
    if content is not None:
        pidfile.write_text(content)
    with pytest.raises(ReloadFailed, match=str(pidfile)):
        await Reloader(signal_settings(pidfile=pidfile)).reload()


async def test_pidfile_naming_another_program_is_not_signalled(spawn, tmp_path) -> None:
    """A stale pidfile whose pid was reused: SIGHUP would kill most programs."""
    child = spawn()
    pidfile = tmp_path / "crio.pid"
    pidfile.write_text(str(child.pid))
    with pytest.raises(ReloadFailed, match="not 'crio'"):
        await Reloader(signal_settings(pidfile=pidfile, process_name="crio")).reload()
    await asyncio.sleep(0.1)
    assert child.hups() == 0 and child.proc.poll() is None


async def test_signal_by_process_name(spawn) -> None:
    name = unique_name()
    child = spawn(name)
    result = await Reloader(signal_settings(process_name=name)).reload()
    assert await child.wait_hups() == 1
    assert str(child.pid) in result.detail


async def test_zero_or_several_processes_by_name(spawn) -> None:
    name = unique_name()
    with pytest.raises(ReloadFailed, match=f"no running process named '{name}'"):
        await Reloader(signal_settings(process_name=name)).reload()
    a, b = spawn(name), spawn(name)
    with pytest.raises(ReloadFailed) as e:
        await Reloader(signal_settings(process_name=name)).reload()
    assert f"{min(a.pid, b.pid)}, {max(a.pid, b.pid)}" in str(e.value)
    await asyncio.sleep(0.1)
    assert a.hups() == b.hups() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="reading other processes' sockets needs root")
async def test_cri_socket_picks_the_instance(spawn, tmp_path) -> None:
    name = unique_name()
    sock = tmp_path / "crio.sock"
    other = spawn(name, tmp_path / "other.sock")
    ours = spawn(name, sock)
    result = await Reloader(signal_settings(process_name=name), cri_socket=sock).reload()
    assert await ours.wait_hups() == 1
    assert str(ours.pid) in result.detail and str(sock) in result.detail
    assert other.hups() == 0
    with pytest.raises(ReloadFailed, match="no .* process has socket"):
        await Reloader(signal_settings(process_name=name), cri_socket=tmp_path / "none.sock").reload()


def fake_systemctl(path: Path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


async def test_systemctl_success(tmp_path) -> None:
    args = tmp_path / "args"
    systemctl = fake_systemctl(tmp_path / "systemctl", f'echo "$@" > {args}\n')
    result = await Reloader(ReloadSettings(strategy="systemctl", systemd_unit="crio"),
                            systemctl=systemctl).reload()
    assert args.read_text().split() == ["reload", "crio"]
    assert result.strategy == "systemctl"


async def test_systemctl_failure_carries_stderr(tmp_path) -> None:
    systemctl = fake_systemctl(tmp_path / "systemctl",
                               'echo "Failed to reload crio.service: Unit crio.service not found." >&2\nexit 5\n')
    with pytest.raises(ReloadFailed, match="exited 5: Failed to reload crio.service: Unit crio.service not found"):
        await Reloader(ReloadSettings(strategy="systemctl"), systemctl=systemctl).reload()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl")
async def test_real_systemctl_failure() -> None:
    unit = f"pinsvc-test-{secrets.token_hex(4)}.service"
    with pytest.raises(ReloadFailed) as e:
        await Reloader(ReloadSettings(strategy="systemctl", systemd_unit=unit)).reload()
    assert "exited" in str(e.value) and "(no output)" not in str(e.value)


async def test_systemctl_missing_and_hanging(tmp_path) -> None:
    with pytest.raises(ReloadFailed, match="cannot run"):
        await Reloader(ReloadSettings(strategy="systemctl"), systemctl=str(tmp_path / "missing")).reload()
    slow = fake_systemctl(tmp_path / "slow", "exec sleep 10\n")
    start = time.monotonic()
    with pytest.raises(ReloadFailed, match="did not finish"):
        await Reloader(ReloadSettings(strategy="systemctl"), systemctl=slow,
                       systemctl_timeout_seconds=0.2).reload()
    assert time.monotonic() - start < 5


async def test_none_strategy() -> None:
    result = await Reloader(ReloadSettings(strategy="none")).reload()
    assert result.strategy == "none" and "not asked to reload" in result.detail


def test_unknown_strategy() -> None:
    with pytest.raises(InvalidArgument):
        Reloader(ReloadSettings(strategy="kill"))
