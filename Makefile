# Parity: the two quickstart commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast proto bench bench-setup serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of PyTorch first, so the project's torch range installs nothing more
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench]'
	# perf_analyzer's shared libraries (Debian's libb64, the CUDA runtime stub from PyPI)
	PYTHON="$(abspath $(PY))" bash bench/setup.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m parity demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

proto: $(STAMP)
	$(PY) proto/generate.py

bench-setup: $(STAMP)
	bash bench/setup.sh --peer

bench: bench-setup
	$(PY) bench/serving.py

serve: $(STAMP)
	$(PY) -m parity serve --model-repository $(or $(REPO),configs/model-repository)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
