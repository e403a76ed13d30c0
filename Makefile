# NAG: supernet, cost models, triplets, evaluator, generator and the gRPC server.
SHELL := /bin/bash
PY := .venv/bin/python
PROFILE ?= default
RUN_DIR ?= runs/$(PROFILE)
BUNDLE ?= bundles/$(PROFILE)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PHONY_TARGETS := proto collect train-generator serve bench-generator bench-server bench-frontier bench-frontier-goal
.PHONY: $(PHONY_TARGETS) setup data test test-deps lint train-supernet profile-device demo bench-supernet bench-standalone bench-recipe bench-latency clean

setup: .venv/.installed data proto

# gRPC stubs, generated from proto/ (never edited by hand; git ignores nag/v1/).
PROTO_SRC := proto/nag/v1/generator.proto
PROTO_OUT := nag/v1/generator_pb2.py
proto: $(PROTO_OUT)

$(PROTO_OUT): $(PROTO_SRC) .venv/.installed
	mkdir -p nag/v1
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTO_SRC)
	touch nag/v1/__init__.py

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	# The local CPU build of torch first, so that nothing later pulls a CUDA build.
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e '.[dev]'
	.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Real parts the tests run: nginx (the gRPC load balancer of tests/test_replicas.py) and Prometheus
# (tests/test_prometheus.py), from Debian's packages.
test-deps:
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] || ! command -v prometheus >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light prometheus; \
	fi

test: setup test-deps
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .

train-supernet: setup
	$(PY) -m nag.pipeline.train_supernet --profile $(PROFILE) --out $(RUN_DIR) --resume

DEVICE ?= cpu
profile-device: setup
	$(PY) -m nag.cli profile-device --device $(DEVICE) --bundle $(BUNDLE)

# Serves the committed default bundle at once; `make demo PROFILE=demo` first builds the small demo
# bundle from scratch (supernet, device, triplets, evaluator, generator: a few minutes on 2 cores).
demo: setup
	$(PY) -m nag.pipeline.train_generator --profile $(PROFILE) --bundle $(BUNDLE) --run-dir $(RUN_DIR)
	$(PY) -m nag.server.demo --bundle $(BUNDLE)

# Every missing stage of the bundle, then the evaluator and generator of each device.
train-generator: setup
	$(PY) -m nag.pipeline.train_generator --profile $(PROFILE) --bundle $(BUNDLE) --run-dir $(RUN_DIR)

collect: setup
	$(PY) -m nag.pipeline.collect_triplets --bundle $(BUNDLE)

serve: setup
	$(PY) -m nag.cli serve --bundle $(BUNDLE)

bench-supernet: setup
	$(PY) -m benchmarks.supernet_frontier --supernet bundles/default/supernet.pt
	$(PY) -m benchmarks.train_throughput

# The biggest, the smallest and the server's picks at 25/50/75% of the cpu range, each trained alone for
# the supernet's epochs (two at a time, one thread each: hours on 2 cores) vs sliced out of the supernet.
bench-standalone: setup
	$(PY) -m benchmarks.supernet_vs_standalone --supernet bundles/default/supernet.pt --standard

# The supernet recipe study: each lever on a 3-epoch proxy, scored on the same 53 children.
bench-recipe: setup
	$(PY) -m benchmarks.recipe_study train --work runs/recipe
	$(PY) -m benchmarks.recipe_study report --work runs/recipe

# Latency measurement noise, predictor accuracy (PNG) and predictor throughput for one device.
bench-latency: setup
	$(PY) -m benchmarks.measure_latency --bundle $(BUNDLE) --device $(DEVICE)

# Generator feasibility (predicted and measured), pick quality, generation time, frontier PNG.
bench-generator: setup
	$(PY) -m benchmarks.generator_quality --bundle $(BUNDLE) --device $(DEVICE)

# Server p50/p99 and req/s, uncached vs cached, 1 vs 32 clients, and a 60 s soak (about 2 minutes).
bench-server: setup
	$(PY) -m benchmarks.server_load --bundle $(BUNDLE)

# NAG against random, evolutionary (supernet and MLP predictor) and BigNAS coarse-to-fine search at 10
# budgets, and PNAG's Tables 2-5 (about 30 minutes on 2 cores; QUICK=1: the demo bundle in minutes).
bench-frontier: setup
ifdef QUICK
	$(PY) -m benchmarks.frontier --bundle bundles/demo --device cpu --quick --name frontier_quick
else
	$(PY) -m benchmarks.frontier --bundle $(BUNDLE) --device $(DEVICE)
endif

# The goal: NAG against evolution with 1,000 supernet evaluations per budget (about an hour on 2 cores).
bench-frontier-goal: setup
	$(PY) -m benchmarks.frontier --bundle $(BUNDLE) --device $(DEVICE) --methods nag,evolution \
		--evolution-evaluations 1000 --no-ablations --name frontier_goal

clean:
	rm -rf runs .pytest_cache .ruff_cache
