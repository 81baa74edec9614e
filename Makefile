# The README's commands. From a fresh clone, `make train` or `make test` creates the
# virtual environment, installs the pinned dependencies, builds the extension, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ninja (for the extension build) comes from the venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Where nvcc's toolkit lives. The .cu files are compiled where a GPU is present;
# GRU_TORCH_CUDA=1 compiles them without one (as CI does), GRU_TORCH_CUDA=0 never.
export CUDA_HOME ?= /usr/local/cuda
export GRU_TORCH_CUDA

SOURCES := $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh) setup.py pyproject.toml gru_torch/_build.py

# The IMDB data is found on its own (see the README); DATA=PATH picks a file or folder.
DATA ?=
# More options for the scripts, e.g. make train TRAIN_ARGS="--epochs 1 --limit-train 2000"
TRAIN_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv build test bench train clean gpu-check

venv: $(VENV)/.deps
$(VENV)/.deps: requirements-dev.txt
	@echo "== setting up $(VENV): torch 2.14.1 and the pinned tools (requirements-dev.txt)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

build: $(VENV)/.built
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	@$(PY) gru_torch/_build.py
	$(PY) -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .
	$(PY) -c "import gru_torch; s = gru_torch.extension_status(); print(s); assert s.loaded"
	touch $@

test: build
	$(PY) -m pytest -v

train: build
	$(PY) scripts/train.py --cell gru --out runs/gru $(if $(DATA),--data $(DATA)) $(TRAIN_ARGS)

bench: build
	$(PY) scripts/benchmark.py $(BENCH_ARGS)

# Everything that needs a GPU (build, CUDA tests, compute-sanitizer, benchmark against
# cuDNN), for a machine that has one: see scripts/gpu_check.sh.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build *.egg-info gru_torch/_C*.so $(VENV)/.built
