# The README's commands. Everything runs from a fresh clone: `make test` creates the
# virtual environment, installs the pinned dependencies, builds the extension, and
# runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# ninja (for the extension build) comes from the venv.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Where nvcc's toolkit lives; the .cu files are compiled whenever it and a CUDA build
# of torch are present. GRU_TORCH_CUDA=1 makes a failed CUDA compile fail the build,
# GRU_TORCH_CUDA=0 skips it.
export CUDA_HOME ?= /usr/local/cuda
export GRU_TORCH_CUDA

SOURCES := $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh) setup.py pyproject.toml gru_torch/_build.py

.PHONY: venv build test bench train clean gpu-check

# The IMDB archive: the shared copy when present, else the cache or a download.
DATA ?= $(wildcard ../shared/data/aclImdb_v1-text.tar.gz)

venv: $(VENV)/.deps
$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

build: $(VENV)/.built
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import gru_torch; s = gru_torch.extension_status(); print('gru_torch extension:', s); assert s.loaded"
	touch $@

test: build
	$(PY) -m pytest -q

train: build
	$(PY) scripts/train.py --cell gru $(if $(DATA),--data $(DATA)) --out runs/gru

bench: build
	$(PY) scripts/benchmark.py

# Everything that needs a GPU (build, CUDA tests, compute-sanitizer, benchmark against
# cuDNN), for a machine that has one: see scripts/gpu_check.sh.
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build *.egg-info gru_torch/_C*.so $(VENV)/.built
