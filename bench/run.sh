#!/usr/bin/env bash
# The benchmark suite (issue 7) in one command: installs the real peers (cached in
# ~/.cache/pinsvc) and the Python packages (with the `bench` extra: matplotlib) into .venv,
# then runs `python -m bench.suite` (every workload and method against real CRI-O and a real
# registry). Writes bench/results/results.json, bench/results/*.png and docs/benchmarks.md.
# Needs root (CRI-O). `--quick` is a ~2 minute smoke run; see `--help`.
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (CRI-O runs as root): run it as root" >&2
  exit 1
fi
cd "$(dirname "$0")/.."

bash scripts/install-peers.sh
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[bench]'

exec .venv/bin/python -m bench.suite "$@"
