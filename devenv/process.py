"""What every devenv peer (registry, CRI-O, Jaeger, agent) does with its child process."""

from __future__ import annotations

import subprocess
from pathlib import Path


def terminate(process: subprocess.Popen | None, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after `timeout` seconds. False when it was not running."""
    if process is None or process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return True


def tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file ("" when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
