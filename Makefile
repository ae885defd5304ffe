# agentfleet — every entry point a developer or CI needs. `make test` and `make demo` work on a
# fresh machine: they install what is missing and build the control plane on first use.
SHELL := /bin/bash
PY    := .venv/bin/python
export PATH := $(HOME)/.cache/agentfleet/bin/kubernetes-$(shell sed -n 's/^KUBERNETES_VERSION=//p' hack/versions.env):$(HOME)/.cache/agentfleet/bin/helm-$(shell sed -n 's/^HELM_VERSION=//p' hack/versions.env):$(PATH)

.PHONY: format help deps build cluster-up cluster-down cluster-status lint typecheck unit integration e2e chaos security images test demo demo-down bench crds generate docs clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

deps: ## install Prometheus and the Python environment (.venv) if missing
	@hack/deps

build: ## build and cache etcd, kube-*, kubectl, kwok, helm (cold: long; warm: instant)
	@hack/build

cluster-up: deps build ## start the local control plane and Prometheus
	@hack/cluster up

cluster-down: ## stop the local control plane and remove its state
	@hack/cluster down

cluster-status:
	@hack/cluster status

LINTED := operator tests hack/*.py hack/bench hack/harness hack/cluster hack/demo hack/node hack/image hack/images

lint: deps ## ruff check and ruff format --check
	.venv/bin/ruff check $(LINTED)
	.venv/bin/ruff format --check $(LINTED)

format: deps ## apply ruff format
	.venv/bin/ruff format $(LINTED)

typecheck: deps ## mypy --strict on operator/
	.venv/bin/mypy

unit: deps ## fast tests of pure logic
	.venv/bin/pytest -m unit -q

integration: deps build ## tests on the real control plane (started if needed)
	.venv/bin/pytest -m integration -q

e2e: deps build ## real containers on a real node (hack/cluster up --real-node, private ports and namespace)
	.venv/bin/pytest -m e2e -q

chaos: deps build ## the fault-injection suite at full size (make test runs it CI-sized)
	AGENTFLEET_CHAOS_SCALE=7.5 .venv/bin/pytest tests/chaos -q -s

security: deps build ## the adversarial suite: a hostile tenant against the chart-installed operator
	.venv/bin/pytest tests/security -q

images: deps ## build the images (project, agent, fake LLM, pause) as one OCI archive, without a registry
	@hack/image build

test: deps build lint typecheck ## everything: lint, types, unit, integration and e2e tests (tests/e2e runs a real node)
	.venv/bin/pytest -q

crds: deps ## regenerate everything derived from the API types (crds/, the chart's copies, the admission policy, docs/api.md)
	.venv/bin/agentfleet generate

demo: deps build ## the story in real pods on a real node (hack/cluster up --real-node); leaves it up to explore
	@hack/demo

demo-down: ## take the demo down: pods, node, control plane, network namespace, state
	@hack/demo down

bench: deps build ## benchmarks (not part of make test)
	$(PY) -m hack.bench

clean: cluster-down
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
