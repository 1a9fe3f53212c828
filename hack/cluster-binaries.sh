#!/usr/bin/env bash
# Builds the binaries of a single-node Kubernetes cluster (`braid up`) from their Go
# modules and prints the folder that holds them:
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
#   etcd coredns
#
# Nothing is downloaded but Go modules. The Kubernetes binaries come from a throwaway
# module that requires k8s.io/kubernetes with every ./staging/src/k8s.io/X replace pointed
# at the published k8s.io/X module: the same approach, and the same Go build cache, as
# hack/envtest-assets.sh, so the kube-apiserver build is shared with envtest and the etcd
# binary is copied from bin/envtest when it is already there. The result is cached in a
# versioned folder under bin/cluster/; a second run prints the folder and does nothing.
#
#   hack/cluster-binaries.sh
#   K8S_VERSION=1.36.3 ETCD_VERSION=3.6.8 COREDNS_VERSION=1.15.0 hack/cluster-binaries.sh
#
# Cold (empty Go caches, 2 cores): about 4 minutes for Kubernetes, 20 s for etcd and
# 100 s for CoreDNS; peak RSS about 2 GB.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.8}
COREDNS_VERSION=${COREDNS_VERSION:-1.15.0}
root=$(cd "$(dirname "$0")/.." && pwd)
goos=$(go env GOOS) goarch=$(go env GOARCH)
dest=${CLUSTER_BINARIES_DIR:-$root/bin/cluster/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-coredns-${COREDNS_VERSION}-${goos}-${goarch}}
envtest=$root/bin/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-${goos}-${goarch}
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

log() { printf 'cluster-binaries: %s\n' "$*" >&2; }

complete() {
  local b
  for b in "${k8s_cmds[@]}" etcd coredns; do [[ -x $dest/$b ]] || return 1; done
}
if complete; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/k8s" "$work/etcd" "$work/coredns" "$dest.partial"

build_kubernetes() {
  cd "$work/k8s"
  go mod init braid.invalid/cluster-k8s >/dev/null 2>&1
  local gomod staging minor pkgs=()
  gomod=$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f $gomod ]] || { log "cannot read the go.mod of k8s.io/kubernetes@v${K8S_VERSION}"; exit 1; }
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "$gomod")
  [[ -n $staging ]] || { log "no staging replaces found in $gomod"; exit 1; }
  local args=(-require "k8s.io/kubernetes@v${K8S_VERSION}")
  for m in $staging; do args+=(-replace "$m=$m@v0.${K8S_VERSION#*.}"); done
  go mod edit "${args[@]}"
  minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  for c in "${k8s_cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  log "building ${k8s_cmds[*]} v${K8S_VERSION} (first time only, about 4 minutes on 2 cores)"
  # The same flags as hack/envtest-assets.sh, so kube-apiserver comes from the shared cache.
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -o "$dest.partial/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}" \
    "${pkgs[@]}"
}

build_etcd() {
  if [[ -x $envtest/etcd ]]; then
    log "etcd v${ETCD_VERSION}: copied from $envtest"
    cp "$envtest/etcd" "$dest.partial/etcd"
    return
  fi
  cd "$work/etcd"
  go mod init braid.invalid/cluster-etcd >/dev/null 2>&1
  go mod edit -require "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}"
  log "building etcd v${ETCD_VERSION}"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dest.partial/etcd" go.etcd.io/etcd/server/v3
}

build_coredns() {
  cd "$work/coredns"
  go mod init braid.invalid/cluster-coredns >/dev/null 2>&1
  go mod edit -require "github.com/coredns/coredns@v${COREDNS_VERSION}"
  log "building coredns v${COREDNS_VERSION}"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dest.partial/coredns" github.com/coredns/coredns
}

build_kubernetes
build_etcd
build_coredns
rm -rf "$dest"
mv "$dest.partial" "$dest"
log "ready: $dest"
echo "$dest"
