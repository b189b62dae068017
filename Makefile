# ohip-relay: the user's verbs. Every target sets up what it needs on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test lint check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "ohip-relay needs Python 3.11 or newer; run e.g. 'make PYTHON=python3.12 $(MAKECMDGOALS)'" >&2; exit 1; }
	@echo "setting up $(VENV) (once; about a minute)"
	@rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	@touch $@

run: $(STAMP) ## run the whole pipeline on the local stack (local OHIP gateway + moto) and reconcile
	@$(BIN)/ohip-relay local demo

test: $(STAMP) ## run the test suite (unit + integration over real sockets)
	@$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff and mypy
	@$(BIN)/ruff check shared local functions tests
	@$(BIN)/mypy

check: lint test ## what CI runs

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam
