# One-command entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo lab test lint bench

$(BIN)/ppa: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/ppa

install: $(BIN)/ppa

demo: install  ## install, then run the local three-party demo
	$(BIN)/ppa demo --out ppa-demo

lab: install  ## install, then open JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks

test: install  ## install, then run the test suite
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install  ## demo scale and 100,000 rows per party (several minutes)
	$(BIN)/python benchmarks/bench_study.py
