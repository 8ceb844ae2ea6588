# drctl: build, install test services, test, demo, bench.
SHELL := /bin/bash
GO ?= go
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/drctl
VERSITYGW_VERSION := v1.8.0
VERSITYGW := $(CACHE)/bin/versitygw
VERSITYGW_STAMP := $(CACHE)/bin/.versitygw-$(VERSITYGW_VERSION)
STATICCHECK_VERSION := v0.8.2
STATICCHECK_STAMP := $(CACHE)/bin/.staticcheck-$(STATICCHECK_VERSION)
K8S_VERSION := v1.37.2
K8S_STAGING_VERSION := v0.37.2
KUBE_STAMP := $(CACHE)/bin/.kube-$(K8S_VERSION)
KCM_STAMP := $(CACHE)/bin/.kube-controller-manager-$(K8S_VERSION)
KWOK_VERSION := v0.8.0
KWOK_STAMP := $(CACHE)/bin/.kwok-$(KWOK_VERSION)
HELM_VERSION := v3.22.0
HELM_STAMP := $(CACHE)/bin/.helm-$(HELM_VERSION)
export DRCTL_CACHE_DIR := $(CACHE)
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: build deps apt-deps bench-deps test vet fuzz demo bench clean

# drctl, and drctl-kube: the helper of drills in Kubernetes namespaces
# (client-go lives there, not in drctl, which starts once per WAL segment).
build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/drctl ./cmd/drctl
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/drctl-kube ./cmd/drctl-kube

# Everything the tests, demo and bench need on a fresh Debian machine.
deps: apt-deps $(VERSITYGW_STAMP) $(STATICCHECK_STAMP) $(KUBE_STAMP) $(KCM_STAMP) $(KWOK_STAMP) $(HELM_STAMP)

apt-deps:
	@missing=""; \
	ls /usr/lib/postgresql/15/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql-15"; \
	command -v pg_dump >/dev/null || missing="$$missing postgresql-client-15"; \
	command -v pg_config >/dev/null || missing="$$missing libpq-dev"; \
	command -v age >/dev/null || missing="$$missing age"; \
	command -v zstd >/dev/null || missing="$$missing zstd"; \
	command -v runuser >/dev/null || missing="$$missing util-linux"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  mkdir -p /etc/postgresql-common; \
	  grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
	    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VERSITYGW_STAMP):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
	@touch $@

# A real Kubernetes control plane for the chart's tests: kube-apiserver
# and kubectl built from the module proxy (slow: cached), etcd from Debian.
$(KUBE_STAMP):
	bash scripts/build-kube.sh $(CACHE) $(K8S_VERSION) $(K8S_STAGING_VERSION)
	@touch $@

# The drill tests need the namespace and job controllers, and kwok's fake
# nodes (pods run there without a container runtime).
$(KCM_STAMP):
	bash scripts/build-kube.sh $(CACHE) $(K8S_VERSION) $(K8S_STAGING_VERSION) kube-controller-manager
	@touch $@

$(KWOK_STAMP):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin $(GO) install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	@touch $@

$(HELM_STAMP):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@touch $@

$(STATICCHECK_STAMP):
	@mkdir -p $(CACHE)/bin
	GOBIN=$(CACHE)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

vet: $(STATICCHECK_STAMP)
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt" >&2; exit 1; fi
	$(GO) vet ./...
	$(CACHE)/bin/staticcheck ./...

# All tests, against real PostgreSQL 15 and a real versitygw S3 server,
# then every fuzz target for a few seconds.
test: deps vet
	$(GO) test -p 2 -timeout 30m -count=1 ./...
	$(MAKE) --no-print-directory fuzz

# Fuzz targets: every parser of outside input. The seed corpus (testdata/fuzz)
# also runs in plain `go test`. Budgets are execution counts, a few seconds
# each: a duration (-fuzztime 3s) trips a race in Go 1.26's fuzz coordinator
# (golang/go#75804) that fails a run with "context deadline exceeded".
# FUZZTIME=5m overrides every budget to hunt for longer.
FUZZ_TARGETS := ./engine/pgdsn:FuzzParse:50000x ./engine/wal:FuzzParseLSN:100000x ./engine/wal:FuzzSegmentName:100000x \
	./engine/wal:FuzzParseKey:100000x ./engine/wal:FuzzParseHistory:100000x ./catalog:FuzzLoadManifest:20000x \
	./restore/physical:FuzzTarFromRepository:300x ./restore/verify:FuzzServerManifest:50000x \
	./engine/sshsig:FuzzVerify:5000x ./engine/sshsig:FuzzAllowedSigners:20000x ./cmd/drctl:FuzzConfigFile:20000x \
	./cmd/drctl:FuzzLabels:100000x ./engine/pgarchive:FuzzArchive:20000x
fuzz:
	@set -e; log=$$(mktemp); for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest#*:}; [ -z "$(FUZZTIME)" ] || budget=$(FUZZTIME); \
	  echo "fuzz $$name ($$pkg, $$budget)"; \
	  $(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $$budget >"$$log" 2>&1 || { cat "$$log"; rm -f "$$log"; exit 1; }; \
	done; rm -f "$$log"; echo "fuzz: $(words $(FUZZ_TARGETS)) targets passed"

# The main job on the embedded default (a file:// repository).
demo: deps build
	bash scripts/demo.sh

# pgBackRest 2.45 (Debian's) is the comparison point of the physical bench.
bench-deps:
	@command -v pgbackrest >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null; }

# pgbench scale 50: drctl against the floors, pg_dump, a shell pipeline and
# pgBackRest, each measured in the same run.
bench: deps bench-deps build
	$(GO) test ./bench -run '^$$' -bench . -benchtime 1x -timeout 60m -v

clean:
	rm -rf bin demo-work
