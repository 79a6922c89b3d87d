#!/usr/bin/env bash
# The Kubernetes peers of the controller's tests, demo and benchmark (called by
# install-peers.sh; idempotent, cached under $PINSVC_CACHE like CRI-O):
#   - etcd from Debian's etcd-server package, unpacked with `dpkg -x` (no maintainer scripts
#     run, so no packaged service is ever started);
#   - kube-apiserver and kubectl built from the Go module proxy through small wrapper
#     modules (`go install k8s.io/kubernetes/...` cannot work: its go.mod replaces the
#     staging modules with ./staging paths that module zips leave out);
#   - OpenShift's CRDs (PinnedImageSet, MachineConfigNode, MachineConfigPool) from the Go
#     module github.com/openshift/api at a pinned pseudo-version (the module has no tags).
# kube-apiserver takes ~9 minutes to build on 2 cores with an empty Go build cache, kubectl ~3.
set -euo pipefail

CACHE=${PINSVC_CACHE:-$HOME/.cache/pinsvc}
BIN=$CACHE/bin
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
OPENSHIFT_API_VERSION=${OPENSHIFT_API_VERSION:-v0.0.0-20251021124544-a2cb0c5d994d}
CRD_DIR=$CACHE/crds/openshift-api-$OPENSHIFT_API_VERSION
mkdir -p "$BIN"

log() { printf '[install-kube-peers] %s\n' "$*" >&2; }

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
staging_version="v0.${KUBE_VERSION#v1.}"
# Without these the binaries report v0.0.0-master and clients' version checks read wrong.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"

# go_wrapper_build DIR OUTPUT: `go mod tidy` and a static build of the wrapper module in DIR.
go_wrapper_build() {
  (cd "$1" && GOFLAGS=-mod=mod go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$2.part" .)
  mv "$2.part" "$2"
}

build_kube_apiserver() {
  local dir gomod
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [[ -n $gomod ]] || { log "cannot download k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
  {
    echo "module pinsvc.local/kube-apiserver"
    echo "go 1.26"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo "replace ("
    # every staging module k8s.io/kubernetes replaces with ./staging/... -> its published v0.Y.Z
    sed -n '/^replace (/,/^)/p' "$gomod" | sed -n 's/^\t\(k8s.io\/[a-z0-9-]*\) => .*/\t\1 => \1 '"$staging_version"'/p'
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/main.go" <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }
GO
  log "building kube-apiserver $KUBE_VERSION (~9 min on 2 cores with an empty build cache)"
  go_wrapper_build "$dir" "$BIN/kube-apiserver-$KUBE_VERSION"
}

build_kubectl() {
  local dir
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  cat > "$dir/go.mod" <<GOMOD
module pinsvc.local/kubectl
go 1.26
require (
	k8s.io/kubectl $staging_version
	k8s.io/component-base $staging_version
)
GOMOD
  cat > "$dir/main.go" <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
  log "building kubectl $KUBE_VERSION (~3 min)"
  go_wrapper_build "$dir" "$BIN/kubectl-$KUBE_VERSION"
}

install_etcd() {
  local dir version
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  if ! (cd "$dir" && apt-get download etcd-server >/dev/null 2>&1); then
    apt-get update -qq >/dev/null
    (cd "$dir" && apt-get download etcd-server >/dev/null 2>&1)
  fi
  dpkg -x "$dir"/etcd-server_*.deb "$dir/root"
  version=$("$dir/root/usr/bin/etcd" --version | sed -n 's/^etcd Version: //p')
  [[ -n $version ]] || { log "the etcd-server package holds no working etcd"; exit 1; }
  cp "$dir/root/usr/bin/etcd" "$BIN/etcd-v$version.part"
  mv "$BIN/etcd-v$version.part" "$BIN/etcd-v$version"
  ln -sf "etcd-v$version" "$BIN/etcd"
  log "etcd $version from Debian's etcd-server (unpacked, no service installed)"
}

install_crds() {
  local dir src
  dir=$(go mod download -json "github.com/openshift/api@$OPENSHIFT_API_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir ]] || { log "cannot download github.com/openshift/api@$OPENSHIFT_API_VERSION"; exit 1; }
  src=$dir/machineconfiguration/v1/zz_generated.crd-manifests
  mkdir -p "$CRD_DIR.part"
  cp "$src/0000_80_machine-config_01_pinnedimagesets.crd.yaml" \
     "$src/0000_80_machine-config_01_machineconfignodes-Default.crd.yaml" \
     "$src/0000_80_machine-config_01_machineconfigpools.crd.yaml" "$CRD_DIR.part/"
  chmod 0644 "$CRD_DIR.part"/*
  rm -rf "$CRD_DIR" && mv "$CRD_DIR.part" "$CRD_DIR"
  log "OpenShift CRDs from github.com/openshift/api@$OPENSHIFT_API_VERSION in $CRD_DIR"
}

[[ -x $BIN/etcd ]] || install_etcd
[[ -x $BIN/kube-apiserver-$KUBE_VERSION ]] || build_kube_apiserver
ln -sf "kube-apiserver-$KUBE_VERSION" "$BIN/kube-apiserver"
[[ -x $BIN/kubectl-$KUBE_VERSION ]] || build_kubectl
ln -sf "kubectl-$KUBE_VERSION" "$BIN/kubectl"
[[ -f $CRD_DIR/0000_80_machine-config_01_machineconfigpools.crd.yaml ]] || install_crds
ln -sfn "openshift-api-$OPENSHIFT_API_VERSION" "$CACHE/crds/openshift-api"

log "kube peers ready: etcd $("$BIN/etcd" --version | sed -n 's/^etcd Version: //p'), kube-apiserver $("$BIN/kube-apiserver" --version | sed 's/^Kubernetes //'), kubectl $KUBE_VERSION, CRDs $CRD_DIR"
