# Every kubefaas workflow is a make target. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install what the tests need (PostgreSQL, Redis, interpreters) if missing
	@scripts/deps.sh

.PHONY: run
run: deps ## Run the whole platform here (kubefaas up) with the example functions deployed
	$(CARGO) build -p kubefaas
	scripts/run.sh

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
crds: ## Regenerate crds/ from the Rust resource types
	$(CARGO) run -q -p kubefaas-core --bin kubefaas-crdgen -- crds

.PHONY: lint
lint: ## Check formatting and clippy lints
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: services
services: ## Start throwaway PostgreSQL/Redis and open a shell with DATABASE_URL/REDIS_URL set
	scripts/with-services.sh $${SHELL:-bash}
