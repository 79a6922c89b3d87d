#!/usr/bin/env bash
# Install the real peers the tests and the demo use: CRI-O, crictl, conmon, crun and the
# distribution registry. Idempotent: binaries are cached under $PINSVC_CACHE
# (default ~/.cache/pinsvc) and reused by later runs and by CI. `--runtime-only` skips the
# development tools (buf, protoc plugins, kubeconform) and the Kubernetes peers
# (install-kube-peers.sh: etcd, kube-apiserver, kubectl, OpenShift's CRDs) that only the tests need.
set -euo pipefail

CACHE=${PINSVC_CACHE:-$HOME/.cache/pinsvc}
CRIO_VERSION=${CRIO_VERSION:-v1.36.3}
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}
BIN=$CACHE/bin
mkdir -p "$BIN"

log() { printf '[install-peers] %s\n' "$*" >&2; }

need_apt=()
for pkg in libseccomp-dev libsqlite3-dev conmon crun docker-registry apache2-utils pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# `go install pkg@version` is refused here: the proxy does not serve the module's version list,
# which go install reads for deprecation notices. Downloading the exact module version and
# building inside it (with its own go.mod/go.sum) needs only that version.
go_build() { # module version package output [tags]; GO_BUILD_CGO=0 go_build ... builds without cgo,
  local dir   # GO_BUILD_LDFLAGS=... go_build ... links with those flags (a version stamp)
  dir=$(go mod download -json "$1@$2" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir ]] || { log "cannot download $1@$2"; exit 1; }
  log "building $3 from $1@$2 (CRI-O takes ~2 min on 2 cores with an empty build cache)"
  GOFLAGS=-mod=mod CGO_ENABLED=${GO_BUILD_CGO:-1} go build -C "$dir" -trimpath -tags "${5:-}" \
    -ldflags "${GO_BUILD_LDFLAGS:-}" -o "$4.part" "$3"
  mv "$4.part" "$4"
}

[[ -x $BIN/crio-$CRIO_VERSION ]] || go_build github.com/cri-o/cri-o "$CRIO_VERSION" ./cmd/crio \
  "$BIN/crio-$CRIO_VERSION" \
  'containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs btrfs_noversion exclude_graphdriver_devicemapper seccomp libsqlite3'
ln -sf "crio-$CRIO_VERSION" "$BIN/crio"

[[ -x $BIN/crictl-$CRICTL_VERSION ]] || go_build sigs.k8s.io/cri-tools "$CRICTL_VERSION" ./cmd/crictl \
  "$BIN/crictl-$CRICTL_VERSION"
ln -sf "crictl-$CRICTL_VERSION" "$BIN/crictl"

# Jaeger v2 (traces in tests). The Go module ships no UI assets: the binary serves a
# placeholder page at /, the query API works. Build ~5 min on 2 cores with an empty cache.
[[ -x $BIN/jaeger-$JAEGER_VERSION ]] || GO_BUILD_CGO=0 go_build github.com/jaegertracing/jaeger \
  "$JAEGER_VERSION" ./cmd/jaeger "$BIN/jaeger-$JAEGER_VERSION"
ln -sf "jaeger-$JAEGER_VERSION" "$BIN/jaeger"

# The development tools below are for the tests only; the demo runs `install-peers.sh --runtime-only`.
if [[ ${1:-} != --runtime-only ]]; then
# Proto tooling: buf (lint, breaking, generate; ~5 min on 2 cores with an empty cache) and the
# Go plugins it runs for clients/go (scripts/gen-protos.py).
BUF_VERSION=${BUF_VERSION:-v1.75.0}
PROTOC_GEN_GO_VERSION=${PROTOC_GEN_GO_VERSION:-v1.36.12}
PROTOC_GEN_GO_GRPC_VERSION=${PROTOC_GEN_GO_GRPC_VERSION:-v1.6.2}
[[ -x $BIN/buf-$BUF_VERSION ]] || GO_BUILD_CGO=0 go_build github.com/bufbuild/buf "$BUF_VERSION" ./cmd/buf \
  "$BIN/buf-$BUF_VERSION"
ln -sf "buf-$BUF_VERSION" "$BIN/buf"
[[ -x $BIN/protoc-gen-go-$PROTOC_GEN_GO_VERSION ]] || GO_BUILD_CGO=0 go_build google.golang.org/protobuf \
  "$PROTOC_GEN_GO_VERSION" ./cmd/protoc-gen-go "$BIN/protoc-gen-go-$PROTOC_GEN_GO_VERSION"
ln -sf "protoc-gen-go-$PROTOC_GEN_GO_VERSION" "$BIN/protoc-gen-go"
[[ -x $BIN/protoc-gen-go-grpc-$PROTOC_GEN_GO_GRPC_VERSION ]] || GO_BUILD_CGO=0 go_build \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" . \
  "$BIN/protoc-gen-go-grpc-$PROTOC_GEN_GO_GRPC_VERSION"
ln -sf "protoc-gen-go-grpc-$PROTOC_GEN_GO_GRPC_VERSION" "$BIN/protoc-gen-go-grpc"

# kubeconform validates deploy/kubernetes in the tests, against the Kubernetes JSON schemas
# the kubernetes-validate package ships (no schema download). Pure Go, seconds to build.
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
[[ -x $BIN/kubeconform-$KUBECONFORM_VERSION ]] || GO_BUILD_CGO=0 go_build github.com/yannh/kubeconform \
  "$KUBECONFORM_VERSION" ./cmd/kubeconform "$BIN/kubeconform-$KUBECONFORM_VERSION"
ln -sf "kubeconform-$KUBECONFORM_VERSION" "$BIN/kubeconform"

# grpcurl asks the agent's gRPC health and reflection as a user's own tool would
# (tests/e2e/test_health.py). Pure Go, a minute to build.
GRPCURL_VERSION=${GRPCURL_VERSION:-v1.9.3}
[[ -x $BIN/grpcurl-$GRPCURL_VERSION ]] || GO_BUILD_CGO=0 \
  GO_BUILD_LDFLAGS="-X main.version=$GRPCURL_VERSION" \
  go_build github.com/fullstorydev/grpcurl "$GRPCURL_VERSION" ./cmd/grpcurl "$BIN/grpcurl-$GRPCURL_VERSION"
ln -sf "grpcurl-$GRPCURL_VERSION" "$BIN/grpcurl"

# The controller's tests and benchmark: etcd, kube-apiserver, kubectl and OpenShift's CRDs.
bash "$(dirname "$0")/install-kube-peers.sh"

# helm lints and renders the chart (deploy/helm/pinsvc) in the tests. ~3 min on 2 cores with
# an empty build cache. The version stamp is what the Makefile of the release sets.
HELM_VERSION=${HELM_VERSION:-v4.3.2}
[[ -x $BIN/helm-$HELM_VERSION ]] || GO_BUILD_CGO=0 \
  GO_BUILD_LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
  go_build helm.sh/helm/v4 "$HELM_VERSION" ./cmd/helm "$BIN/helm-$HELM_VERSION"
ln -sf "helm-$HELM_VERSION" "$BIN/helm"

# The container image (scripts/build-image.sh, tests/packaging/test_image_run.py): buildah
# builds it from the Dockerfile without a daemon, podman runs it, skopeo copies
# it to a registry, mmdebstrap makes the local Debian 12 base image. Debian's packages; runc
# because crun 1.8 refuses hybrid cgroup hosts (cgroup v1 plus a cgroup2 mount with a controller).
need_apt=()
for pkg in buildah podman skopeo mmdebstrap uidmap runc; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
fi

# pinns must exist for CRI-O to start; it is never run for image work.
[[ -x $BIN/pinns ]] || { printf '#!/bin/sh\nexit 1\n' > "$BIN/pinns"; chmod +x "$BIN/pinns"; }

log "peers ready in $BIN: $("$BIN/crio" --version 2>/dev/null | head -1), $("$BIN/crictl" --version), jaeger-$JAEGER_VERSION"
