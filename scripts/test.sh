#!/usr/bin/env bash
# Runs every test: installs the real peers (cached in ~/.cache/pinsvc) and the Python
# dependencies into .venv, checks the generated protobuf code for drift, then runs pytest
# (unit tests, the real-peer dev environment tests and the e2e tests against real CRI-O,
# registry and crictl). The e2e tier needs root.
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (the e2e tests run CRI-O): run it as root" >&2
  exit 1
fi
cd "$(dirname "$0")/.."

bash scripts/install-peers.sh
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[dev]'

.venv/bin/python scripts/gen-protos.py --check
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
