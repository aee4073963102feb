# Every kubefaas workflow is a make target. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
# The Python kubernetes client for the standalone API server's client tests (made by `make deps`).
export KUBEFAAS_TEST_PYTHON ?= $(CURDIR)/.venv/tests/bin/python

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install what the tests need (PostgreSQL, Redis, interpreters; Python kubernetes client and Helm SDK) if missing
	@scripts/deps.sh
	@scripts/python-venv.sh $(patsubst %/bin/python,%,$(KUBEFAAS_TEST_PYTHON)) >/dev/null

.PHONY: run
run: ## Run the whole platform here (kubefaas up) with the example functions deployed
	@scripts/deps.sh
	$(CARGO) build -p kubefaas -p kubefaas-executor --bins
	scripts/run.sh

.PHONY: bench
bench: ## Measure the pipeline here: Function apply → Ready, Invocation apply → Succeeded
	@scripts/deps.sh
	$(CARGO) build --release -p kubefaas -p kubefaas-executor --bins
	scripts/bench-pipeline.sh

.PHONY: build
build: ## Build every crate
	$(CARGO) build --workspace --all-targets

.PHONY: test
test: deps ## Run every test against throwaway PostgreSQL/Redis (or DATABASE_URL/REDIS_URL)
ifeq ($(NEXTEST),yes)
	scripts/with-services.sh $(CARGO) nextest run --workspace --no-fail-fast
else
	scripts/with-services.sh $(CARGO) test --workspace --no-fail-fast
endif

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) from the Rust resource types
	$(CARGO) run -q -p kubefaas-core --bin kubefaas-crdgen -- crds
	rm -f charts/kubefaas/crds/*.yaml && cp crds/*.yaml charts/kubefaas/crds/

.PHONY: lint-chart
lint-chart: deps ## Lint and render the Helm chart with the Helm SDK and check the output (charts/tests)
	$(CARGO) build -q -p kubefaas-operator -p kubefaas-executor -p kubefaas-api-gateway --bins
	$(CARGO) test -q -p kubefaas-chart-tests

.PHONY: lint
lint: ## Check formatting and clippy lints
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: apiserver
apiserver: ## Run the standalone API server on 127.0.0.1:6443 (kubeconfig in .tmp/standalone.kubeconfig)
	$(CARGO) run -q -p kubefaas-standalone --bin kubefaas-apiserver -- --listen 127.0.0.1:6443 \
		--kubeconfig .tmp/standalone.kubeconfig --data-dir .tmp/standalone

.PHONY: services
services: ## Start throwaway PostgreSQL/Redis and open a shell with DATABASE_URL/REDIS_URL set
	scripts/with-services.sh $${SHELL:-bash}

