"""The scripts that need root run as root, re-run themselves through sudo when another user
starts them and sudo exists, and otherwise stop with a message (a root shell on a minimal
machine has no sudo: issue 13). Run as the user nobody, with a stand-in sudo that only
records how it was called."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/demo.sh", "scripts/demo-controller.sh", "scripts/test.sh", "bench/run.sh",
           "scripts/build-image.sh", "scripts/jaeger-screenshot.sh"]
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="runs the scripts as another user: needs root and setpriv")


@pytest.fixture
def bin_dir():
    """A directory nobody can read, for a stand-in `sudo`."""
    path = Path(tempfile.mkdtemp(prefix="pinsvc-scripts-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_nobody(script: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "env", f"PATH={path}", "bash", script, "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_root_and_without_sudo_the_script_says_so(script, bin_dir):
    proc = as_nobody(script, f"{bin_dir}:/usr/bin:/bin")
    assert proc.returncode == 1
    assert f"{script}: needs root" in proc.stderr and "run it as root" in proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_root_the_script_reruns_itself_through_sudo(script, bin_dir):
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/bin/sh\necho "sudo $*"\n')
    sudo.chmod(0o755)
    proc = as_nobody(script, f"{bin_dir}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"sudo -- bash {script} --help"
