#!/usr/bin/env bash
# The local demo: installs what is missing (real CRI-O, crictl, Jaeger, registry; Python deps
# in .venv), then rolls a PinnedImageSet out with pinctl to 3 nodes (a real CRI-O and a pinsvc
# agent each) in 2 pools. Needs root. Options: --jaeger, --keep (see --help).
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (CRI-O runs as root): run it as root" >&2
  exit 1
fi
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh --runtime-only
[[ -x .venv/bin/python ]] || python3 -m venv .venv
# pip takes seconds even when nothing changed: install again only when a pyproject.toml changed
if [[ ! -f .venv/.pinsvc-installed || pyproject.toml -nt .venv/.pinsvc-installed \
      || clients/python/pyproject.toml -nt .venv/.pinsvc-installed ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[dev]'
  touch .venv/.pinsvc-installed
fi
exec .venv/bin/python -m devenv.demo "$@"
