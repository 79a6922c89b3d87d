"""Where the development peers live: the cache that `scripts/install-peers.sh` fills."""

from __future__ import annotations

import os
from pathlib import Path

INSTALL_HINT = "run `bash scripts/install-peers.sh` to build and cache it"
REPO = Path(__file__).resolve().parent.parent
"""The repository: `devenv` is not installed (the wheel and the image leave it out), so
`python -m devenv.…` runs from here."""


class MissingBinary(FileNotFoundError):
    """A peer binary is not in the cache (or is not executable)."""


def cache_dir() -> Path:
    """The peer cache: `$PINSVC_CACHE`, or `~/.cache/pinsvc`."""
    env = os.environ.get("PINSVC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pinsvc"


def bin_path(name: str) -> Path:
    """The cached binary `name` (crio, crictl, pinns); raises `MissingBinary` with the
    command that installs it when it is absent."""
    path = cache_dir() / "bin" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingBinary(f"{name} is not installed at {path}: {INSTALL_HINT}")
    return path
