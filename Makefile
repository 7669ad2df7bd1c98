# The project's public interface: demo, test, build-repo, serve (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPEC ?= deploy.yaml
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
HEALTH_PORT ?= 8003
PYTEST_ARGS ?=
SERVE_ARGS ?=
K8S_RATE ?= 20000

.PHONY: install demo test unit build-repo check-repo serve lint train loadtest load-check stall bench bench-router \
	lifecycle-demo finetune-report drift-demo soak mutation mutation-sample perf-analyzer docker up down clean k8s

# The venv is (re)made when missing or when the dependencies change.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,torch]'
	@touch $@

install: $(VENV)/.installed

build-repo: install
	$(VENV)/bin/triton-repo build-repo --spec $(SPEC)

# Fails when the committed ngc repository differs from what the spec generates.
check-repo: install
	$(VENV)/bin/triton-repo build-repo --spec $(SPEC) --check
	$(VENV)/bin/triton-repo k8s --spec $(SPEC) --check

# Kubernetes manifests from the spec into k8s/ (validated offline), then a capacity plan with its
# autoscaling simulation (build/capacity/capacity.png). See docs/kubernetes.md.
k8s: install
	$(VENV)/bin/triton-repo k8s --spec $(SPEC)
	$(VENV)/bin/triton-repo capacity --rate $(K8S_RATE)

# nginx (when installed) takes HTTP_PORT/GRPC_PORT as the front proxy, Triton behind it on loopback;
# SERVE_ARGS=--no-proxy serves without it (docs/security.md).
serve: build-repo
	$(VENV)/bin/triton-repo serve --spec $(SPEC) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --health-port $(HEALTH_PORT) $(SERVE_ARGS)

demo: build-repo
	$(PY) -m clients.demo --spec $(SPEC)

# A second MNIST version staged, sent 10%, promoted and rolled back under load (docs/lifecycle.md).
lifecycle-demo: install
	$(PY) -m clients.lifecycle_demo --spec $(SPEC)

# Fine-tuning measured offline (docs/lifecycle.md, Fine-tuning): thicker-pen feedback -> a candidate, its
# gate and the before/after table and PNG in build/finetune/ (no server; --no-stage).
finetune-report: build-repo
	$(PY) models/mnist/finetune.py --out build/finetune
	$(VENV)/bin/triton-repo finetune mnist_classifier --no-stage --db sqlite:///build/finetune/registry.db \
		--feedback build/finetune/thicker_pen_feedback.npz \
		--eval "thicker-pen held-out=build/finetune/thicker_pen_holdout.npz" --out build/finetune

drift-demo: install
	$(PY) -m clients.drift_demo --spec $(SPEC)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# Retrain the showcase model (needs PyTorch: `pip install -e '.[train]'`).
train: install
	$(PY) -m pip install --quiet -e '.[train]'
	$(PY) models/mnist/train.py

# A short headless Locust run (HTTP and gRPC users) against an embedded server it starts.
loadtest: install
	$(PY) -m loadtest.run

# CI's guard against the batcher's 500 ms stall (docs/stall.md): under a minute, fails on any request
# over 400 ms or any failed request, never on throughput.
load-check: install
	$(PY) -m loadtest.stall --hog 0 --concurrency 4,8 --duration 3 --warmup 1 --fail-ms 400 --out build/load-check

# The stall reproduction with a CPU hog beside the server: before (queue policy) and after (the spec).
stall: install
	$(PY) -m loadtest.stall --variant queue-policy --variant spec --duration 60

# The benchmark report (bench/): ceiling, Flask baseline, Triton over HTTP/gRPC, perf_analyzer sweeps.
bench: perf-analyzer
	$(PY) -m loadtest.bench
	$(PY) -m loadtest.router_cost --rounds 5 --report bench/report.md

# What the lifecycle router costs (bench/router_cost.md): the ensemble as deployed, through the router and
# without it, interleaved, concurrency 16 (make bench also puts it into bench/report.md).
bench-router: install
	$(PY) -m loadtest.router_cost --rounds 5

# Mutation testing (mutmut + the alert-rule mutator), report in build/mutation/, at low priority with one
# worker (MUTATION_CHILDREN); MUTATION_ARGS="--only 'clients.gate.*'" for one module. Needs promtool
# (Debian package `prometheus`). See docs/mutation.md.
MUTATION_ARGS ?=
MUTATION_CHILDREN ?= 1
mutation: install
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) -m mutation.run --children $(MUTATION_CHILDREN) $(MUTATION_ARGS)

# CI's sampled run: MUTATION_SAMPLE mutants drawn at random (seed: MUTATION_SEED, else the CI run id or
# the date) from every mutated module; fails when fewer than 85 % of the non-equivalent ones are killed.
MUTATION_SAMPLE ?= 40
mutation-sample: install
	$(PY) -m pip install --quiet -e '.[mutation]'
	$(PY) -m mutation.run --children $(MUTATION_CHILDREN) --sample $(MUTATION_SAMPLE) $(if $(MUTATION_SEED),--seed $(MUTATION_SEED))

# Triton's perf_analyzer as .venv/bin/perf_analyzer (on PATH with the virtualenv active).
perf-analyzer: install
	VENV=$(VENV) bash loadtest/install_perf_analyzer.sh

# 10 minutes of the ensemble at about 80 % of its peak: 0 failures and flat memory (build/soak/).
soak: install
	$(PY) -m loadtest.soak --minutes $(or $(SOAK_MINUTES),10)

# The CPU compose stack (Triton + Prometheus + Alertmanager) on any Docker host; see docs/compose.md.
up: install
	VENV=$(VENV) .ci/compose-check.sh --up

# Takes the stack down, then stops the Docker engine that `make up` / `make docker` started (if they did).
down:
	VENV=$(VENV) .ci/compose-check.sh --down

# Only a Docker engine and `docker compose` (a Docker CLI plugin), for the compose commands of docs/compose.md.
docker: install
	VENV=$(VENV) .ci/compose-check.sh --engine

clean:
	rm -rf build mutants .pytest_cache .ruff_cache
