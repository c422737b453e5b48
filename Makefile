# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install step CI runs pins PyTorch; pyproject.toml itself only asks for torch>=2.4, so
# `pip install -e .` elsewhere takes current releases. Override with e.g. TORCH_SPEC=torch, or
# add pip options: TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_STORAGE ?= sqlite:///demo.db

.PHONY: install demo test system-deps test-slow test-browser lint bench-workers bench-trainer \
	bench-update gpu-check gpu-wheels gpu-data clean

$(BIN)/hpsearch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/hpsearch

demo: install
	$(BIN)/hpsearch run quickstart --trials 20 --storage $(DEMO_STORAGE)
	$(BIN)/hpsearch best quickstart --storage $(DEMO_STORAGE)
	@echo ""
	@echo "next (see README.md):"
	@echo "  $(BIN)/hpsearch dashboard --storage $(DEMO_STORAGE)        # browse trials at http://127.0.0.1:8080/dashboard"
	@echo "  $(BIN)/hpsearch report quickstart --storage $(DEMO_STORAGE) -o report.html"
	@echo "  $(BIN)/hpsearch export quickstart --storage $(DEMO_STORAGE) --top 3 -o best.yaml"
	@echo "  $(BIN)/hpsearch final best.yaml --seeds 5 -o final.json   # test error with 95% intervals"
	@echo "  $(BIN)/hpsearch launch quickstart --workers 2 --trials 40 --storage journal:demo.log   # parallel workers"

# CI runs this target: here the PostgreSQL tests fail without a server instead of skipping, and
# the Debian packages the tests drive for real (SYSTEM_PACKAGES) are installed where missing.
test: install system-deps
	HPSEARCH_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest

# Debian packages the default suite uses for real: headless Chromium renders optuna-dashboard
# and the report; Slurm and munge run a single-node cluster for the job-array test. Installed
# with apt-get where a command is missing (needs root, or sudo).
SYSTEM_PACKAGES ?= chromium slurm-wlm munge
SYSTEM_COMMANDS ?= chromium slurmctld slurmd munged
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

test-slow: install
	$(BIN)/python -m pytest -m slow

# Only the tests that drive headless Chromium (they are in `make test` too).
test-browser: install system-deps
	$(BIN)/python -m pytest -m browser

# Trials per second with 1, 2, 4 and 8 workers on PostgreSQL and a journal file (not a test);
# the README's table came from these arguments.
BENCH_WORKERS_ARGS ?= --trivial-trials 150 --real-trials 60
bench-workers: install
	$(BIN)/python benchmarks/bench_workers.py $(BENCH_WORKERS_ARGS)

lint: install
	$(BIN)/ruff check hpsearch studies tests
	$(BIN)/mypy hpsearch

# How long one Hinton-MLP trial takes: notebook loop, single path, population, whole studies.
# Needs Fashion-MNIST's four IDX files; on a CPU pass reduced sizes, e.g.
# BENCH_ARGS="--device cpu --epochs 2 --train-subset 5000 --population-sizes 2,4,8 --trials 8"
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
BENCH_ARGS ?=
bench-trainer: install
	$(BIN)/python benchmarks/bench_trainer.py --data-dir $(FASHION_MNIST_DIR) $(BENCH_ARGS)

# The stacked optimizer's update, eager against fused, in ms per step at K = 8, 64, 256.
BENCH_UPDATE_ARGS ?= --device cpu
bench-update: install
	$(BIN)/python benchmarks/bench_stacked_update.py $(BENCH_UPDATE_ARGS)

# Every GPU measurement in one run (README, "GPU check"): writes $(OUT)/gpu-check.{json,md}.
# No `install` prerequisite: a GPU machine has python3 with torch but no network; the script
# installs the wheels of `make gpu-wheels` (.whl/) itself. DEVICE=cpu: the reduced CPU run.
OUT ?= gpu-check
DEVICE ?= cuda
GPU_CHECK_ARGS ?=
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(OUT) --device $(DEVICE) $(GPU_CHECK_ARGS)

# What a bare GPU machine (Python 3.12, torch, numpy, scipy, scikit-learn, pytest; no network)
# lacks for hpsearch: these wheels, for cp312 manylinux x86_64, the versions CI installs.
GPU_WHEELS ?= optuna==5.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 colorlog==6.12.0 \
	cmaes==0.13.1 optuna-dashboard==0.21.0 bottle==0.13.4 plotly==7.1.0 narwhals==2.29.0 \
	psycopg==3.3.9 psycopg-binary==3.3.9
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

# Fashion-MNIST's four files where the GPU run looks first (carry .gpu-data with .whl).
GPU_DATA_SOURCE ?= $(firstword $(wildcard ../shared/data/fashion-mnist) $(FASHION_MNIST_DIR))
gpu-data:
	mkdir -p .gpu-data/fashion-mnist
	cp $(GPU_DATA_SOURCE)/*-ubyte* .gpu-data/fashion-mnist/

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache demo.db demo.log *.hpsearch-* *.torn-* report.html best.yaml final.json final.md gpu-check
