#!/usr/bin/env bash
# Builds the container image from the Dockerfile with buildah: no daemon, run as root.
#
#   bash scripts/build-image.sh                     # FROM python:3.11-slim (pulled from Docker Hub)
#   bash scripts/build-image.sh --base debian       # FROM a local Debian 12 + python3 base (mmdebstrap)
#   bash scripts/build-image.sh --base IMAGE        # FROM any image with python3 3.11 and pip
#   options: --tag NAME (default localhost/pinsvc:0.1.0)
#
# `--base debian` makes localhost/pinsvc-base:bookworm from Debian's packages (python3 3.11,
# python3-pip, libstdc++6 for grpcio, passwd; no documentation) with mmdebstrap and the Debian
# mirror, once: it is rebuilt only when the recipe below changes or with --refresh-base. The
# image's layers are cached in the containers storage (/var/lib/containers/storage): an
# unchanged tree rebuilds in seconds, a change under pinsvc/ reruns only the builder's last
# step and the venv copy.
# PyPI is reached only when requirements/image.txt changes. When PIP_CERT names a CA bundle
# (PyPI behind a TLS-inspecting proxy), the builder's pip gets it.
#
# Logs the image's size and layer count, prints its id. Needs buildah, podman and runc (and
# mmdebstrap for --base debian): bash scripts/install-peers.sh installs them.
set -euo pipefail
# Root is needed: as root, or re-run through sudo when that exists.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null && exec sudo -- bash "$0" "$@"
  echo "$0: needs root (buildah builds as root): run it as root" >&2
  exit 1
fi
root=$(cd "$(dirname "$0")/.." && pwd)

base=python:3.11-slim
tag=localhost/pinsvc:0.1.0
refresh_base=0
while (($#)); do
  case $1 in
    --base) base=${2:?--base needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --refresh-base) refresh_base=1; shift ;;
    -h|--help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) printf 'build-image.sh: unknown argument %q (see --help)\n' "$1" >&2; exit 2 ;;
  esac
done

log() { printf '[build-image] %s\n' "$*" >&2; }
for tool in buildah podman runc $([[ $base == debian ]] && echo mmdebstrap); do
  command -v "$tool" >/dev/null || { log "$tool is missing: run bash scripts/install-peers.sh"; exit 1; }
done

# --- the local Debian base ----------------------------------------------------------------
BASE_TAG=localhost/pinsvc-base:bookworm
BASE_PACKAGES=python3,python3-pip,libstdc++6,passwd,ca-certificates
# No manual pages, documentation (copyright files stay) or translations: the slim images'
# choice. apt's lists and caches are removed by mmdebstrap itself.
BASE_OPTIONS=(--variant=essential --include="$BASE_PACKAGES" --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*' --skip=output/dev --format=tar)
BASE_CHANGES=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
recipe=$(printf '%s\n' "${BASE_OPTIONS[@]}" "${BASE_CHANGES[@]}" | sha256sum | cut -c1-16)

debian_base() {
  local have
  have=$(podman image inspect --format '{{index .Labels "io.pinsvc.base.recipe"}}' "$BASE_TAG" 2>/dev/null || true)
  if [[ $have == "$recipe" && $refresh_base == 0 ]]; then
    log "base $BASE_TAG (recipe $recipe) is there"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  log "making $BASE_TAG with mmdebstrap: Debian bookworm, $BASE_PACKAGES"
  mmdebstrap --quiet "${BASE_OPTIONS[@]}" bookworm "$tmp/base.tar"
  podman import --quiet "${BASE_CHANGES[@]}" --change "LABEL io.pinsvc.base.recipe=$recipe" \
    --message "mmdebstrap bookworm $BASE_PACKAGES" "$tmp/base.tar" "$BASE_TAG" >/dev/null
}

if [[ $base == debian ]]; then
  debian_base
  base=$BASE_TAG
fi

# --- the image ----------------------------------------------------------------------------
# runc, not crun: crun 1.8 refuses hybrid cgroup hosts (v1 controllers plus a cgroup2 mount
# with a controller) like the development machines. Limits: buildah would raise the RUN
# steps' open files and processes to 1048576, which needs CAP_SYS_RESOURCE; they get the
# caller's open-file limits and 4096 processes instead.
limit() { local v; v=$(ulimit "$@"); [[ $v == unlimited ]] && echo -1 || echo "$v"; }
build=(buildah build --runtime runc --ulimit "nofile=$(limit -Sn):$(limit -Hn)" --ulimit nproc=4096:4096
  --layers --force-rm --pull=missing --network=host --file "$root/Dockerfile"
  --build-arg "PYTHON_IMAGE=$base" --build-arg "REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)")
if [[ -n ${PIP_CERT:-} ]]; then
  build+=(--volume "$(realpath "$PIP_CERT"):/run/pinsvc-build-ca.pem:ro" --build-arg PIP_CERT=/run/pinsvc-build-ca.pem)
fi
# The builder stage is tagged too, so that its last layer stays cached and the previous
# build's images (each source change leaves ~200 MB) can be removed once replaced.
builder_tag="${tag%:*}-builder:${tag##*:}"
previous=$(podman image inspect --format '{{.Id}}' "$tag" "$builder_tag" 2>/dev/null || true)
log "building $tag from $base"
start=$SECONDS
"${build[@]}" --target builder --tag "$builder_tag" "$root" >&2
"${build[@]}" --tag "$tag" "$root" >&2
current=$(podman image inspect --format '{{.Id}}' "$tag" "$builder_tag")
for old in $previous; do
  grep -qx "$old" <<<"$current" || podman rmi "$old" >/dev/null 2>&1 || true
done
size=$(podman image inspect --format '{{.Size}}' "$tag")
layers=$(podman image inspect --format '{{len .RootFS.Layers}}' "$tag")
log "built $tag in $((SECONDS - start)) s: $((size / 1000000)) MB, $layers layers"
head -1 <<<"$current"
