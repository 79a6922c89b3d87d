#!/usr/bin/env bash
# The local demo: installs what is missing (real CRI-O, crictl, registry; Python deps in
# .venv), then pins sample images on a real CRI-O through the pinsvc agent. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[dev]'
exec .venv/bin/python -m pinsvc.devenv.demo "$@"
