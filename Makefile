# `make demo` and `make test` each set up .venv on first use; nothing else is needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Fashion-MNIST's IDX files: a checkout next to ../shared finds them there unless MURMURA_DATA says.
SHARED_FMNIST := $(abspath $(CURDIR)/../shared/datasets/fashion-mnist)
ifeq ($(MURMURA_DATA),)
ifneq ($(wildcard $(SHARED_FMNIST)/train-images-idx3-ubyte.gz),)
export MURMURA_DATA := $(SHARED_FMNIST)
endif
endif

.PHONY: install test demo lint bench clean

install: $(STAMP)

# torch first, pinned to the CPU wheel these machines carry: a bare `torch` requirement
# with no torch importable would pull a multi-GB CUDA build. ByzFL last, for the tests that
# compare murmura's robust rules with it, without its declared dependencies: torchvision's
# wheels do not load with the CPU torch (the tests load its aggregator and attack modules alone).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,rl]'
	$(PY) -m pip install -q --no-deps byzfl==0.0.11
	# gbrl's CPU wheel imports with numpy, scipy and torch alone: its declared shap, numba,
	# cmake and pybind11 are not needed (and would pull several hundred MB)
	$(PY) -m pip install -q --no-deps gbrl==1.1.9
	touch $(STAMP)

test: install
	$(PY) -m pytest

demo: install
	$(PY) -m murmura demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/engine.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
