# Two commands for a new user: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_ROWS ?= 200000

.PHONY: install demo test test-fast test-gpu lint bench bench-peer clean system-deps system-deps-venv

# Debian packages outside .venv/ (scripts/system-deps.sh): python3-venv to create .venv/, and for the tests
# chromium, chromium-driver and postgresql. Phony, with no stamp: the check takes milliseconds and runs
# apt-get only for what is missing, so a package removed later comes back. Order-only (`|`) below, so that
# running the check never makes the .venv/ stamp out of date.
system-deps-venv:
	PYTHON=$(PYTHON) scripts/system-deps.sh venv

system-deps: system-deps-venv
	scripts/system-deps.sh test

$(STAMP): pyproject.toml requirements-cpu.txt shims/fbgemm-gpu/pyproject.toml | system-deps-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-cpu.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) DEMO_ROWS=$(DEMO_ROWS) $(BIN)/python -m pipelines.demo

test: system-deps $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop: everything but the tests marked slow (long learning runs on 60k-1M rows, the interrupted
# pipeline); docs/testing.md lists what each leaves out.
test-fast: system-deps $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# On a CUDA machine (an environment with the CUDA builds, see README "GPU install"): the GPU tests, then the
# training tests, which run on the GPU there (the 2-process ones are left out: they would need two GPUs).
test-gpu:
	python -m pytest -q -ra -m gpu
	python -m pytest -q -ra -m "not dist" tests/test_train.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/prepare_vs_pandas.py
	$(BIN)/python benchmarks/prepare_memory.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/train_vs_pytorch.py
	$(BIN)/python benchmarks/table_dtype.py
	$(BIN)/python benchmarks/search_speed.py
	$(BIN)/python benchmarks/multiplex.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/serve_load.py

# The peer benchmark (docs/quality.md): FuxiCTR 2.3.10 and scikit-learn in their own environment, .venv-peer/
# (FuxiCTR needs polars<2, the platform polars 2). torch first, alone: the local CPU wheel, not PyPI's CUDA build.
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
BENCH_PEER_ARGS ?=

$(PEER_STAMP): benchmarks/requirements-peer.txt | system-deps-venv
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet torch==2.13.0
	$(PEER_VENV)/bin/pip install --quiet -r benchmarks/requirements-peer.txt
	touch $(PEER_STAMP)

bench-peer: $(STAMP) $(PEER_STAMP)
	$(BIN)/python benchmarks/vs_fuxictr.py $(BENCH_PEER_ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENV) $(DEMO_DIR)
