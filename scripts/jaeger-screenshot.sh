#!/usr/bin/env bash
# Takes docs/jaeger-rollout.png: the Jaeger UI's trace view of the demo's traced rollout
# (pinctl -> agent -> CRI-O), in headless Chromium. Needs root (CRI-O does) and a checkout
# of the public Jaeger UI source, which never enters this repository:
#
#   git clone --branch v1.74.0 https://github.com/jaegertracing/jaeger-ui /tmp/jaeger-ui
#   sudo bash scripts/jaeger-screenshot.sh /tmp/jaeger-ui [OUT.png]
#
# Builds the UI in that checkout with npm unless packages/jaeger-ui/build is there (~4 min on
# 2 cores), installs Debian's chromium when missing, then runs `python -m devenv.screenshot`.
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (CRI-O runs as root): run it as root" >&2
  exit 1
fi
ui=$(realpath "${1:?usage: jaeger-screenshot.sh JAEGER_UI_CHECKOUT [OUT.png]}")
out=$(realpath -m "${2:-$(dirname "$0")/../docs/jaeger-rollout.png}")
cd "$(dirname "$0")/.."
log() { printf '[jaeger-screenshot] %s\n' "$*" >&2; }

[[ -f $ui/packages/jaeger-ui/package.json ]] || { log "$ui is not a jaeger-ui checkout"; exit 1; }
if [[ ! -f $ui/packages/jaeger-ui/build/index.html ]]; then
  log "building the Jaeger UI in $ui (npm)"
  # npm 11 (with this machine's Node 20) refuses `npm ci` on v1.74.0's lock (optional
  # platform packages of @unrs/resolver are missing from it); `npm install --no-save` keeps
  # every version the lock names and adds those.
  (cd "$ui" && { npm ci --no-audit --no-fund || npm install --no-save --no-audit --no-fund; } && npm run build)
fi

bash scripts/install-peers.sh --runtime-only
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
  log "apt-get install chromium"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e clients/python -e '.[dev]'
fi
exec .venv/bin/python -m devenv.screenshot --ui-assets "$ui/packages/jaeger-ui/build" --out "$out"
