# The two commands of the README's quick start; each sets up what it needs first.
#   make demo   train, evaluate and draw the demo model on the embedded dataset
#   make test   the test suite (what CI runs)
# Both create (or reuse) a virtual environment in .venv with the CPU build of torch.
# TORCH=... picks another torch requirement (e.g. TORCH="torch==2.14.1" for a CUDA build).

VENV ?= .venv
TORCH ?= torch==2.13.0
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdbench-installed

.PHONY: demo test lint setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssdbench demo

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check .
