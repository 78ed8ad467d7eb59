# Two commands on a fresh machine: `make test` and `make bench`. Each creates .venv and installs
# what it needs, with pip; CuPy (the gpu extra) is added only where nvidia-smi finds a GPU.
# The two install different extras under their own stamps: `make test` never installs JAX.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
GPU_EXTRA := $(if $(HAS_GPU),$(comma)gpu,)
TEST_EXTRAS := test,demo,ml_dtypes$(GPU_EXTRA)
BENCH_EXTRAS := bench,jax$(GPU_EXTRA)
DEMO_EXTRAS := demo$(GPU_EXTRA)
# One stamp per set of extras, named after it: .venv/.installed-test-demo-ml_dtypes and so on.
stamp = $(VENV)/.installed-$(subst $(comma),-,$(1))
TEST_STAMP := $(call stamp,$(TEST_EXTRAS))
BENCH_STAMP := $(call stamp,$(BENCH_EXTRAS))
DEMO_STAMP := $(call stamp,$(DEMO_EXTRAS))

.PHONY: test bench demo lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The stamp's name lists the extras, joined by "-" (no extra name holds one).
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[$(subst -,$(comma),$*)]"
	touch $@

# pytest runs one worker per core (pytest-xdist).
test: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n auto

# The benchmarks are a folder of the repository, not part of the installed package.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

demo: $(DEMO_STAMP)
	$(PY) -m gpukernels demo all

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(TEST_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name "*.nb[ic]" -print | xargs rm -f  # Numba caches
