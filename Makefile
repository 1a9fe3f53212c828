# Braid's build. Every tool is pinned and built from its Go module into bin/ on first use.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

LOCALBIN ?= $(CURDIR)/bin
GO ?= go
# Release builds of the operator and the proxy leave gRPC's x/net/trace (and its
# html/template) out: nothing serves /debug/requests, and it is 1.5 MB of the proxy's
# resident memory (docs/benchmarks.md).
RELEASE_TAGS ?= grpcnotrace
export GOTOOLCHAIN := local

## Tool versions
CONTROLLER_GEN_VERSION ?= v0.21.0
KUSTOMIZE_VERSION ?= v5.8.2
GOLANGCI_LINT_VERSION ?= v2.15.0
BUF_VERSION ?= v1.75.0
PROTOC_GEN_GO_VERSION ?= $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.1
FORTIO_VERSION ?= v1.68.2
# envtest control plane, built by hack/envtest-assets.sh
K8S_VERSION ?= 1.36.3
ETCD_VERSION ?= 3.6.8

CONTROLLER_GEN := $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
KUSTOMIZE := $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
GOLANGCI_LINT := $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
BUF := $(LOCALBIN)/buf-$(BUF_VERSION)
PROTOC_GEN_GO := $(LOCALBIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC := $(LOCALBIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
FORTIO := $(LOCALBIN)/fortio-$(FORTIO_VERSION)

ENVTEST_ASSETS = $(shell K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) hack/envtest-assets.sh)
# The real single-node cluster (braid up): binaries built by hack/cluster-binaries.sh,
# images by hack/images, all state in BRAID_STATE_DIR.
COREDNS_VERSION ?= 1.15.0
CLUSTER_BIN = $(shell K8S_VERSION=$(K8S_VERSION) ETCD_VERSION=$(ETCD_VERSION) COREDNS_VERSION=$(COREDNS_VERSION) hack/cluster-binaries.sh)
IMAGES_DIR ?= $(LOCALBIN)/images
BRAID := $(LOCALBIN)/braid
BRAID_STATE_DIR ?= /var/lib/braid-cluster

TEST_FLAGS ?= -race -count=1 -timeout 20m

##@ Newcomers

.PHONY: demo
demo: ## Canary 90/10 -> 50/50 -> 0/100 with Braid: on a real local cluster as root, else on apiserver+etcd with the proxy as a process.
	@if [ "$$(id -u)" = 0 ]; then \
	  $(MAKE) --no-print-directory demo-cluster; \
	else \
	  echo "make demo: not root, so no real cluster (braid up needs root for its bridge, nftables, cgroups and containerd)."; \
	  echo "Running the envtest demo instead: a real API server and etcd, the operator, and braid-proxy as a process."; \
	  $(MAKE) --no-print-directory demo-envtest; \
	fi

.PHONY: demo-envtest
demo-envtest: ## The demo without root or a cluster: apiserver+etcd, the operator, two backends and a proxy as processes.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) run ./hack/demo

.PHONY: demo-cluster
demo-cluster: up ## The demo on the real local cluster (root): installs Braid, deploys frontend + reviews v1/v2, shifts the canary.
	KUBECONFIG=$(BRAID_STATE_DIR)/admin.kubeconfig $(GO) run ./hack/cluster-demo

.PHONY: test
test: lint verify unit ## Everything CI checks: lint, generated-code drift, unit + envtest + e2e tests.

##@ Development

.PHONY: unit
unit: ## Run the Go tests (unit, envtest integration and envtest-driven e2e).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) test $(TEST_FLAGS) ./...

.PHONY: build
build: ## Build the operator, the proxy and braid-init into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -tags $(RELEASE_TAGS) -o $(LOCALBIN)/braid-operator .
	CGO_ENABLED=0 $(GO) build -trimpath -tags $(RELEASE_TAGS) -o $(LOCALBIN)/braid-proxy ./cmd/braid-proxy
	CGO_ENABLED=0 $(GO) build -trimpath -tags $(RELEASE_TAGS) -o $(LOCALBIN)/braid-init ./cmd/braid-init

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (linters listed in .golangci.yml).
	$(GOLANGCI_LINT) run ./...

.PHONY: generate
generate: $(CONTROLLER_GEN) $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## Regenerate deepcopy code and the proxy API's protobuf code.
	$(CONTROLLER_GEN) object paths=./api/... paths=./internal/smi/...
	PATH="$(CURDIR)/hack/protoc-plugins:$$PATH" PROTOC_GEN_GO="$(PROTOC_GEN_GO)" PROTOC_GEN_GO_GRPC="$(PROTOC_GEN_GO_GRPC)" $(BUF) generate

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Regenerate the MeshConfig CRD, the operator's RBAC role and the webhook configuration.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=braid-operator paths=./controllers/... paths=./internal/... paths=./webhooks/... output:rbac:dir=config/rbac
	$(CONTROLLER_GEN) webhook paths=./webhooks/... output:webhook:dir=config/webhook

.PHONY: verify
verify: $(KUSTOMIZE) ## Fail if generated code or manifests drift from their sources, or a kustomization does not build.
	hack/verify-generated.sh
	$(KUSTOMIZE) build config/crd >/dev/null
	$(KUSTOMIZE) build config/rbac >/dev/null
	$(KUSTOMIZE) build config/webhook >/dev/null
	$(KUSTOMIZE) build config/default >/dev/null

##@ Real cluster (root; docs/cluster.md)

.PHONY: cluster-binaries
cluster-binaries: ## Build (once) kube-*, kubelet, kubectl, etcd and CoreDNS for braid up and print their folder.
	@echo "$(CLUSTER_BIN)"

.PHONY: images
images: ## Build the pause, operator, proxy and demo-app images (static binaries, no Docker) as tarballs in bin/images.
	$(GO) run ./hack/images --out $(IMAGES_DIR)

.PHONY: braid
braid: ## Build the braid CLI (up, down, status) into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BRAID) ./cmd/braid

.PHONY: up
up: braid images ## Start a single-node Kubernetes cluster on this machine (or reuse it) and import the images: braid up.
	$(BRAID) up --state-dir $(BRAID_STATE_DIR) --bin-dir "$(CLUSTER_BIN)" --images $(IMAGES_DIR)

.PHONY: down
down: braid ## Stop the cluster and undo every change it made to the host: braid down.
	$(BRAID) down --state-dir $(BRAID_STATE_DIR)

.PHONY: e2e-cluster
e2e-cluster: up ## Install Braid into the local cluster; 18 checks on real pods (injection, probes, Jobs, canary by weight and header, mTLS, access, TCP, operator restart, uninstall).
	KUBECONFIG=$(BRAID_STATE_DIR)/admin.kubeconfig $(GO) run ./hack/e2e-cluster

##@ Benchmarks

.PHONY: bench-control-plane
bench-control-plane: ## Control plane: 1000 services and splits, 1000 proxies; weight change -> last ACK vs API server watch.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" $(GO) run ./hack/bench/controlplane $(BENCH_FLAGS)

.PHONY: bench-identity
bench-identity: ## Certificate issuance: signed per second on one core vs raw ECDSA, Certify latency over gRPC.
	$(GO) run ./hack/bench/identity $(BENCH_FLAGS)

.PHONY: bench-inject
bench-inject: ## Sidecar injection webhook: latency p50/p90/p99/max and allocations per admission request.
	$(GO) run ./hack/bench/inject $(BENCH_FLAGS)

.PHONY: bench-proxy
bench-proxy: $(FORTIO) ## Proxy pair over mTLS vs nginx and haproxy pairs (apt-get installs them): latency, max rps, CPU, RSS.
	CGO_ENABLED=0 $(GO) build -trimpath -tags $(RELEASE_TAGS) -o $(LOCALBIN)/braid-proxy ./cmd/braid-proxy
	$(GO) run ./hack/bench/proxy -fortio $(FORTIO) -proxy $(LOCALBIN)/braid-proxy $(BENCH_FLAGS)

.PHONY: bench
bench: bench-control-plane bench-identity bench-inject bench-proxy ## Every benchmark.

.PHONY: envtest-assets
envtest-assets: ## Build (once) kube-apiserver and etcd for envtest and print their folder.
	@echo "$(ENVTEST_ASSETS)"

.PHONY: tools
tools: $(CONTROLLER_GEN) $(KUSTOMIZE) $(GOLANGCI_LINT) $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(FORTIO) ## Build every pinned tool into bin/.

.PHONY: clean
clean: ## Remove build outputs (keeps the cached tools and envtest binaries).
	rm -f $(LOCALBIN)/braid-operator $(LOCALBIN)/braid-proxy $(LOCALBIN)/braid-init $(LOCALBIN)/braid

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Tools

# go-install-tool installs module $(2) at version $(3) as the versioned binary $(1).
define go-install-tool
@[ -x "$(1)" ] || { \
  echo "installing $(2)@$(3) into $(LOCALBIN)"; \
  tmp=$$(mktemp -d); \
  GOBIN=$$tmp CGO_ENABLED=0 $(GO) install $(2)@$(3); \
  mkdir -p $(LOCALBIN); mv $$tmp/* $(1); rm -rf $$tmp; }
endef

$(CONTROLLER_GEN):
	$(call go-install-tool,$@,sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_GEN_VERSION))
$(KUSTOMIZE):
	$(call go-install-tool,$@,sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))
$(GOLANGCI_LINT):
	$(call go-install-tool,$@,github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))
$(BUF):
	$(call go-install-tool,$@,github.com/bufbuild/buf/cmd/buf,$(BUF_VERSION))
$(PROTOC_GEN_GO):
	$(call go-install-tool,$@,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOC_GEN_GO_VERSION))
$(PROTOC_GEN_GO_GRPC):
	$(call go-install-tool,$@,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GO_GRPC_VERSION))
$(FORTIO):
	$(call go-install-tool,$@,fortio.org/fortio,$(FORTIO_VERSION))
