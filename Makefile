# Every kubefaas workflow is a make target. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
# The Python of .venv/tests (made by `make deps`): the kubernetes client for the standalone API
# server's client tests, the Helm SDK for the chart tests, schemathesis for the gateway's document.
export KUBEFAAS_TEST_PYTHON ?= $(CURDIR)/.venv/tests/bin/python
# boto3 for the gateway's Lambda Invoke API tests (made by `make deps`).
export KUBEFAAS_TEST_AWS_PYTHON ?= $(CURDIR)/.venv/aws/bin/python

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install what the tests need (PostgreSQL, Redis, interpreters; Python kubernetes client, Helm SDK, schemathesis, boto3) if missing
	@scripts/deps.sh
	@scripts/python-venv.sh $(patsubst %/bin/python,%,$(KUBEFAAS_TEST_PYTHON)) >/dev/null
	@scripts/aws-venv.sh $(patsubst %/bin/python,%,$(KUBEFAAS_TEST_AWS_PYTHON)) >/dev/null

.PHONY: run
run: ## Run the whole platform here (kubefaas up) with the example functions deployed
	@scripts/deps.sh
	$(CARGO) build -p kubefaas -p kubefaas-executor --bins
	scripts/run.sh

BENCH_SAMPLES ?= 1000

.PHONY: bench
bench: ## Measure here: the pipeline (apply → Ready/Succeeded), then the REST data plane beside a plain python echo server
	@scripts/deps.sh
	$(CARGO) build --release -p kubefaas -p kubefaas-executor -p kubefaas-operator -p kubefaas-standalone --bins
	$(CARGO) build --release -p kubefaas-api-gateway --bins --examples
	scripts/bench-pipeline.sh
	KUBEFAAS_PG_DURABLE=1 scripts/with-services.sh target/release/examples/gateway_latency $(BENCH_SAMPLES)

.PHONY: build
build: ## Build every crate
	$(CARGO) build --workspace --all-targets

.PHONY: test
test: deps ## Run every test against throwaway PostgreSQL/Redis (or DATABASE_URL/REDIS_URL), all but the real cluster's
ifeq ($(NEXTEST),yes)
	scripts/with-services.sh $(CARGO) nextest run --workspace --exclude kubefaas-cluster-tests --no-fail-fast
else
	scripts/with-services.sh $(CARGO) test --workspace --exclude kubefaas-cluster-tests --no-fail-fast
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

# The real cluster: a single-node Kubernetes from upstream binaries (cluster/), the images built
# here from a debootstrap base, the chart installed with Helm, the end-to-end tests on it.
.PHONY: cluster-up
cluster-up: ## Start the single-node Kubernetes cluster (builds and caches its binaries on first use)
	cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the cluster and remove all it made (processes, mounts, interfaces, iptables rules)
	cluster/down.sh

.PHONY: cluster-test
cluster-test: ## Images, Helm install and the end-to-end tests on the cluster (started, and removed, if none runs)
	cluster/test.sh

# kind: build the images, load them into a kind cluster, install the chart, run the examples.
# Needs docker, kind, kubectl and helm; nothing here runs in `make test`.
KIND ?= kind
DOCKER ?= docker
HELM ?= helm
KIND_CLUSTER ?= kubefaas
KIND_NAMESPACE ?= kubefaas-system
IMAGE_TAG ?= dev
PLATFORM_IMAGES := operator executor api-gateway
# Every image of the runtime catalogue (core/src/runtime.rs; a chart test keeps them in step).
RUNTIME_IMAGES := kubefaas/runtime-python:3.13 kubefaas/runtime-python:3.11 kubefaas/runtime-nodejs:20 kubefaas/runtime-nodejs:22 kubefaas/runtime-go:1.22

.PHONY: kind-up
kind-up: ## Create the kind cluster of kind-config.yaml
	$(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml

.PHONY: kind-images
kind-images: ## Build the platform and runtime images with docker
	$(DOCKER) build -f runtime-images/watchdog/Dockerfile -t kubefaas/watchdog:$(IMAGE_TAG) .
	for target in $(PLATFORM_IMAGES); do \
	  $(DOCKER) build -f runtime-images/platform/Dockerfile --target $$target -t kubefaas/$$target:$(IMAGE_TAG) . || exit 1; \
	done
	for image in $(RUNTIME_IMAGES); do \
	  language=$${image#kubefaas/runtime-}; version=$${language#*:}; language=$${language%%:*}; \
	  case $$language in python) arg=PYTHON_VERSION;; nodejs) arg=NODE_VERSION;; go) arg=GO_VERSION;; esac; \
	  $(DOCKER) build --build-arg WATCHDOG_IMAGE=kubefaas/watchdog:$(IMAGE_TAG) --build-arg $$arg=$$version \
	    -t $$image runtime-images/$$language || exit 1; \
	done

.PHONY: kind-load
kind-load: kind-images ## Build the images and load them into the kind cluster
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(foreach i,$(PLATFORM_IMAGES),kubefaas/$(i):$(IMAGE_TAG)) $(RUNTIME_IMAGES)

.PHONY: kind-install
kind-install: ## Install (or upgrade) the chart on kind with values-kind.yaml and wait until it is ready
	$(HELM) upgrade --install kubefaas charts/kubefaas --namespace $(KIND_NAMESPACE) --create-namespace \
		--values charts/kubefaas/values-kind.yaml --set image.tag=$(IMAGE_TAG) --wait --timeout 5m

.PHONY: kind-examples
kind-examples: ## Apply examples/ on kind, wait for the functions to be Ready and the invocation to succeed
	kubectl apply -f examples/
	kubectl wait --for=jsonpath='{.status.phase}'=Ready function --all --timeout=5m
	kubectl wait --for=jsonpath='{.status.phase}'=Succeeded invocation/hello-once --timeout=5m
	kubectl get invocation hello-once -o jsonpath='{.status.result}{"\n"}'

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
