# NAG: supernet training, export and (later) the generator server.
SHELL := /bin/bash
PY := .venv/bin/python
PROFILE ?= demo
RUN_DIR ?= runs/$(PROFILE)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data test lint train-supernet profile-device demo bench-supernet bench-standalone bench-latency clean

setup: .venv/.installed data

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

test: setup
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .

train-supernet: setup
	$(PY) -m training.train_supernet --profile $(PROFILE) --out $(RUN_DIR) --resume

DEVICE ?= cpu
BUNDLE ?= bundles/default
profile-device: setup
	$(PY) -m nag.cli profile-device --device $(DEVICE) --bundle $(BUNDLE)

$(RUN_DIR)/supernet.pt:
	$(MAKE) train-supernet PROFILE=$(PROFILE) RUN_DIR=$(RUN_DIR)

demo: setup $(RUN_DIR)/supernet.pt
	$(PY) -m nag.cli export-child --supernet $(RUN_DIR)/supernet.pt --arch random --seed 7 \
		-o $(RUN_DIR)/child.onnx --verify

bench-supernet: setup
	$(PY) -m benchmarks.supernet_frontier --supernet bundles/default/supernet.pt
	$(PY) -m benchmarks.train_throughput

# About 30 minutes: the biggest and smallest children trained alone for the default profile's epochs.
bench-standalone: setup
	$(PY) -m benchmarks.supernet_vs_standalone --supernet bundles/default/supernet.pt --profile default

# Latency measurement noise, predictor accuracy (PNG) and predictor throughput for one device.
bench-latency: setup
	$(PY) -m benchmarks.measure_latency --bundle $(BUNDLE) --device $(DEVICE)

clean:
	rm -rf runs .pytest_cache .ruff_cache
