# Two commands on a fresh machine: `make test` and `make bench`. Each creates .venv and installs
# what it needs; CuPy is added only where a GPU (nvidia-smi) is present.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := test,bench,demo$(if $(HAS_GPU),$(comma)gpu,)
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: test bench demo lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m gpukernels bench

demo: $(STAMP)
	$(PY) -m gpukernels demo all

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name "*.nb[ic]" -print | xargs rm -f  # Numba caches
