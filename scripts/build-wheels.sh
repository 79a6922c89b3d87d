#!/usr/bin/env bash
# Build the wheels of the project's own distributions into OUTDIR: pinsvc (this directory)
# and pinsvc-client (clients/python). Run by the Dockerfile's builder stage and, the same
# way, by tests/packaging/test_image.py. Dependencies are not built: they come from the
# lock (requirements/image.txt).
set -euo pipefail
out=${1:?usage: build-wheels.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
for dir in "$root" "$root/clients/python"; do
  if [[ ! -f $dir/pyproject.toml ]]; then
    printf '[build-wheels] %s has no pyproject.toml: not built\n' "$dir" >&2
    continue
  fi
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$dir"
done
ls "$out"
