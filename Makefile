# llmservice-operator. `make test` sets everything up on a fresh machine and runs every test.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := .venv-installed
# The dependencies live in a venv cached outside the repo, one per pyproject.toml: a fresh clone
# links .venv to it and installs only itself (editable), instead of every dependency again.
VENV_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llmservice-operator/venvs/dev-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: venv test test-unit test-stories lint fmt crds dashboards kind-demo manifests bench-dataplane bench-controlplane bench-coldstart render-samples e2e-bins node-deps images test-images image-lock cluster-up cluster-down demo clean

$(STAMP): pyproject.toml
	test -x $(VENV_CACHE)/bin/python || $(PY) -m venv $(VENV_CACHE)
	test -f $(VENV_CACHE)/.deps || { $(VENV_CACHE)/bin/pip install -q --upgrade pip && \
	  $(VENV_CACHE)/bin/pip install -q -e ".[dev]" && touch $(VENV_CACHE)/.deps; }
	if [ -d $(VENV) ] && [ ! -L $(VENV) ]; then rm -rf $(VENV); fi
	ln -sfn $(VENV_CACHE) $(VENV)
	touch $@

# The shared venv holds one checkout's editable install at a time: point it here if another
# clone installed itself since (a cheap import; pip only when needed).
venv: $(STAMP)
	@$(BIN)/python -c "import llmservice_operator as m, sys; sys.exit(not m.__file__.startswith('$(CURDIR)/'))" \
	  2>/dev/null || $(BIN)/pip install -q --no-deps -e .

CACHE_DIR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/llmservice-operator
# Lint caches outside the repo too, so a fresh clone (CI's) checks only what changed (mypy: 11 s cold).
export MYPY_CACHE_DIR := $(CACHE_DIR)/mypy
export RUFF_CACHE_DIR := $(CACHE_DIR)/ruff
TEST_CLUSTER := $(CACHE_DIR)/cluster-test
# The tests' own local cluster, fresh: the environment the tests find it by, then its start
# (the recipe runs it in the background, or waits for it).
TEST_CLUSTER_UP = export E2E_CLUSTER_STATE=$(TEST_CLUSTER)/state.json E2E_KUBECONFIG=$(TEST_CLUSTER)/kubeconfig; \
	mkdir -p $(TEST_CLUSTER); $(BIN)/python -m e2e.cluster down >/dev/null; \
	$(BIN)/python -m e2e.cluster up --images pause --kubeconfig-out $$E2E_KUBECONFIG > $(TEST_CLUSTER)/up.log 2>&1

# The tests that need none of the shared cluster: unit and component tests, the request path run on
# this host (Ray Serve, HAProxy, the sidecar; the engine stand-in and real vLLM), Ray's own code
# against the rendered configs, and the tests that start clusters of their own.
HOST_TESTS := tests e2e/tests/test_dataplane.py e2e/tests/test_dataplane_vllm.py e2e/tests/test_operator_archive.py \
  e2e/tests/test_ray_dp_bounds.py e2e/tests/test_cluster_lifecycle.py
RESULTS := .test-results

## Lint, build the local cluster's binaries and images (cached outside the repo), run all tests.
## The end-to-end tests run against a local cluster started beside them by `e2e.cluster up`, through
## its kubeconfig (E2E_KUBECONFIG), as against any cluster. Two pytest runs side by side: the
## cluster's (its tests mostly wait on controllers, kubelet and Ray starting) and the host's
## (HOST_TESTS, printed after it); one alone left a third of the 2 cores idle. The cluster starts
## first, while ruff and mypy run.
test: venv e2e-bins test-images
	mkdir -p $(RESULTS)/host $(RESULTS)/cluster
	$(TEST_CLUSTER_UP) & \
	{ $(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy; } || { wait; $(BIN)/python -m e2e.cluster down; exit 1; }; \
	LLMSERVICE_TEST_RESULTS=$(RESULTS)/host $(BIN)/pytest -m "not story" --junitxml=$(RESULTS)/host/junit.xml \
	  -o cache_dir=.pytest_cache/host $(HOST_TESTS) > $(RESULTS)/host.log 2>&1 & host=$$!; \
	trap 'kill $$host 2>/dev/null; wait; $(BIN)/python -m e2e.cluster down; exit 130' INT TERM; \
	LLMSERVICE_TEST_RESULTS=$(RESULTS)/cluster $(BIN)/pytest -m "not story" --junitxml=$(RESULTS)/cluster/junit.xml \
	  e2e/tests $(addprefix --ignore=,$(HOST_TESTS)); rc=$$?; \
	wait $$host; host_rc=$$?; echo "=== the host's tests ($(RESULTS)/host.log) ==="; cat $(RESULTS)/host.log; \
	wait; $(BIN)/python -m e2e.cluster down; exit $$(( rc || host_rc ))

## The real-pod stories (e2e/story.py: every switch, the failures, the sidecar switched off), one
## service after another on the local cluster's real node: about 30 minutes on 2 cores.
test-stories: venv e2e-bins images
	$(TEST_CLUSTER_UP) && \
	LLMSERVICE_TEST_BUDGETS=0 $(BIN)/pytest -m story e2e/tests; rc=$$?; $(BIN)/python -m e2e.cluster down; exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The unit tier alone: pure tests, no subprocess, no cluster (seconds).
test-unit: venv
	$(BIN)/pytest tests -m unit -p no:cacheprovider

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Regenerate crds/ from the API models (a test fails when they drift).
crds: venv
	$(BIN)/llmservice crd > crds/llmservice.dev_llmservices.yaml
	$(BIN)/llmservice crd --kopf-peering > crds/kopf-peering.yaml

## Regenerate the Grafana dashboards the chart ships (a test fails when they drift).
dashboards: venv
	$(BIN)/python -m monitoring.dashboards

## Plain manifests for kustomize, rendered from the Helm chart.
manifests: e2e-bins
	$$($(PY) -m e2e.bins --print-dir helm)/helm template llmservice-operator charts/llmservice-operator \
	  --namespace llmservice-system --include-crds --kube-version 1.36.3 2>/dev/null > manifests/kustomize/operator.yaml

## The operator at fleet scale on the local control plane (N=100,300,1000): table + PNG.
bench-controlplane: venv e2e-bins
	$(BIN)/python -m e2e.bench_controlplane --n 100,300,1000 --png bench-controlplane.png

## The request path side by side (Python proxy, HAProxy ingress, + edge sidecar, direct): table + PNG.
bench-dataplane: venv
	$(BIN)/python -m e2e.dataplane.bench --concurrency 1,16,64,256 --png bench-dataplane.png

## Cold start on the real node per model source and loading mode (pvc, s3, gs, gs streamed, hf, node cache).
bench-coldstart: venv e2e-bins images
	$(BIN)/python -m e2e.bench_coldstart

## Golden files for the samples (tests compare against them).
render-samples: venv
	for f in manifests/samples/*.yaml; do \
	  $(BIN)/llmservice render $$f > tests/golden/$$(basename $$f); done

## kube-apiserver, controller-manager, scheduler, kubectl, etcd, kwok, helm, KubeRay, Prometheus from Go modules.
e2e-bins:
	$(PY) -m e2e.bins

## The real node's Debian packages (root): container runtime, CNI plugins, iptables and ipset (kube-proxy,
## kube-router), image builder, Redis, jemalloc (the operator image's allocator, for the operator run here).
NODE_PKGS := containerd runc containernetworking-plugins mmdebstrap iproute2 iptables ipset util-linux zstd redis-server libjemalloc2
node-deps:
	@missing=$$(for p in $(NODE_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

## The real node's images (pause, operator, CPU serving image) and the tiny model, built offline and cached.
images: venv node-deps
	$(BIN)/python -m e2e.build

# The same: the operator image, which changes with every commit, rebuilds only its own
# package's layer (a second); its dependencies' root is cached until they change.
test-images: venv node-deps
	$(BIN)/python -m e2e.build

## Re-resolve the images' requirements.txt (exact pins): ray-cpu from requirements.in, the operator from pyproject.toml.
image-lock: venv
	$(BIN)/python -m e2e.build.image --lock

## A local cluster: control plane, simulated GKE nodes, one real node; prints the kubeconfig path.
cluster-up: venv e2e-bins images
	$(BIN)/python -m e2e.cluster up

cluster-down: venv
	$(BIN)/python -m e2e.cluster down

## The product's main job on the embedded default: local cluster, samples rendered and applied.
demo: venv e2e-bins images
	$(BIN)/python -m e2e.demo

## The demo on a kind cluster, for machines with Docker and kind (not these: no Docker engine).
KIND_CLUSTER ?= llmservice
kind-demo: venv images
	@command -v docker >/dev/null && command -v kind >/dev/null || { \
	  echo "make kind-demo needs Docker and kind (https://kind.sigs.k8s.io); without a Docker engine use make demo"; exit 1; }
	kind get clusters | grep -qx $(KIND_CLUSTER) || \
	  $(BIN)/python -m e2e.kind config | kind create cluster --name $(KIND_CLUSTER) --config -
	kind get kubeconfig --name $(KIND_CLUSTER) > $(CACHE_DIR)/kind-$(KIND_CLUSTER).kubeconfig
	E2E_KUBECONFIG=$(CACHE_DIR)/kind-$(KIND_CLUSTER).kubeconfig E2E_KIND_CLUSTER=$(KIND_CLUSTER) $(BIN)/python -m e2e.demo

clean:
	rm -rf $(VENV) $(STAMP) .pytest_cache .ruff_cache
