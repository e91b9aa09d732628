# `make test` and `make demo` each create .venv on first use. Override the torch build with e.g.
#   make test TORCH_SPEC="torch==2.13.0+cu128 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/python train.py loss=bmc data=pseudo_winning

# Throughput against TRL's DPOTrainer and a bare PyTorch loop (docs/performance.md); ~10-15 min on 2 CPU cores.
# Extra arguments: make bench BENCH_ARGS="--device gpu"
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(BIN)/python -m bmc.bench $(BENCH_ARGS)

clean:
	rm -rf outputs .cache .pytest_cache
