# The two commands a user needs: `make lab` and `make test`. Both set everything up first and are
# idempotent: a second run installs nothing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llama3-lab-installed
NOTEBOOKS ?= notebooks
PYTEST_WORKERS ?= 2

.PHONY: setup assets compiled lab test lint unit notebooks browser refresh-notebooks bench clean-venv

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

assets: setup
	$(PY) -m llama3_lab fetch

# Extra options for JupyterLab, e.g. `make lab LAB_ARGS="--no-browser --port 8890"`. Running as root (a
# container) needs --allow-root, added automatically.
LAB_ARGS ?=
ROOT_ARG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

# The decode step compiled once for this machine (llama3-lab compile: about two minutes on two cores the first
# time, then found in the cache in seconds); generate, chat and Session use it by default. Where it cannot be
# built (no C++ compiler, a GPU, too little memory) it says why and generation takes the hookable path.
compiled: assets
	$(PY) -m llama3_lab compile --at-setup

lab: compiled
	$(PY) -m jupyter lab --notebook-dir=$(NOTEBOOKS) $(ROOT_ARG) $(LAB_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: assets
	$(PY) -m pytest -p no:nbval tests

notebooks: assets
	# one torch thread per notebook kernel: two kernels with two threads each on two cores thrash
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbval-lax --nbval-current-env -n $(PYTEST_WORKERS) --dist loadscope $(NOTEBOOKS)/

test: lint unit notebooks

refresh-notebooks: assets
	bash scripts/refresh_notebooks.sh $(NOTEBOOKS)/*.ipynb

bench: assets
	$(PY) benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
