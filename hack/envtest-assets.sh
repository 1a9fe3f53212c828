#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from their Go modules and
# prints the folder that holds them, for KUBEBUILDER_ASSETS.
#
# Nothing is downloaded but Go modules. The result is cached in a versioned folder under
# bin/, so only the first run pays for the build (about 3-4 minutes on 2 cores).
#
#   hack/envtest-assets.sh            build if missing, print the folder
#   K8S_VERSION=1.36.3 ETCD_VERSION=3.6.8 hack/envtest-assets.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.8}
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${ENVTEST_ASSETS_DIR:-$root/bin/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-$(go env GOOS)-$(go env GOARCH)}

log() { printf 'envtest-assets: %s\n' "$*" >&2; }

if [[ -x $dest/kube-apiserver && -x $dest/etcd ]]; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apiserver" "$work/etcd" "$dest.partial"

# kube-apiserver: a throwaway module that requires k8s.io/kubernetes and points every
# ./staging/src/k8s.io/X replace of its go.mod at the published k8s.io/X v0.N.M module.
build_apiserver() {
  cd "$work/apiserver"
  go mod init braid.invalid/envtest-apiserver >/dev/null 2>&1
  local gomod staging minor
  gomod=$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || { log "cannot read the go.mod of k8s.io/kubernetes@v${K8S_VERSION}"; exit 1; }
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$gomod")
  [[ -n $staging ]] || { log "no staging replaces found in $gomod"; exit 1; }
  local args=(-require "k8s.io/kubernetes@v${K8S_VERSION}")
  for m in $staging; do args+=(-replace "$m=$m@v0.${K8S_VERSION#*.}"); done
  go mod edit "${args[@]}"
  minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  log "building kube-apiserver v${K8S_VERSION} (first time only, a few minutes)"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$dest.partial/kube-apiserver" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
    k8s.io/kubernetes/cmd/kube-apiserver
}

build_etcd() {
  cd "$work/etcd"
  go mod init braid.invalid/envtest-etcd >/dev/null 2>&1
  go mod edit -require "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}"
  log "building etcd v${ETCD_VERSION}"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dest.partial/etcd" go.etcd.io/etcd/server/v3
}

build_apiserver
build_etcd
rm -rf "$dest"
mv "$dest.partial" "$dest"
log "ready: $dest"
echo "$dest"
