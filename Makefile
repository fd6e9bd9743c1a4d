# The two commands of the quick start are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format typecheck bench build build-ReaperFunction clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per extra: re-install only when pyproject.toml changes.
$(VENV)/.installed-demo: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/reaper demo

# Two workers, each with its own servers: the suite mostly waits (sessions growing idle past a
# threshold), so they overlap well on two cores. Not against one shared REAPER_TEST_DSN server,
# where two workers' passes would contend for the same pass lock.
PYTEST_WORKERS := $(if $(REAPER_TEST_DSN),,-n 2)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/cfn-lint template.yaml
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

# sam is installed outside the project venv (its pins clash with ours); see docs/deploying.md.
# --build-in-source: SAM would otherwise copy the whole tree, .venv included, before building.
build:
	sam build --build-in-source

# Called by `sam build` (BuildMethod: makefile): cross-platform wheels, no Docker needed.
build-ReaperFunction:
	scripts/build_lambda.sh "$(ARTIFACTS_DIR)"

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache .hypothesis
