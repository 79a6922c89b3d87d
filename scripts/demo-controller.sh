#!/usr/bin/env bash
# The controller demo: a real kube-apiserver with OpenShift's CRDs, 3 nodes (real CRI-O and a
# pinsvc agent each), pinsvc-controller; `kubectl apply -f` of the documented PinnedImageSets,
# then the MachineConfigNode status. Installs what is missing (the Kubernetes peers: the first
# kube-apiserver build takes ~9 minutes on 2 cores). Needs root.
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (CRI-O and the API server's peers run as root): run it as root" >&2
  exit 1
fi
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh --runtime-only
bash scripts/install-kube-peers.sh
[[ -x .venv/bin/python ]] || python3 -m venv .venv
if [[ ! -f .venv/.pinsvc-installed || pyproject.toml -nt .venv/.pinsvc-installed \
      || clients/python/pyproject.toml -nt .venv/.pinsvc-installed ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[dev]'
  touch .venv/.pinsvc-installed
fi
exec .venv/bin/python -m devenv.demo_controller "$@"
