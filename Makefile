# ohip-relay: the user's verbs. Every target sets up what it needs on a fresh machine.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test lint check clean build deploy linters

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

# The chaos suite (docs/chaos.md): CHAOS_SCHEDULES seeded fault schedules from CHAOS_SEED.
CHAOS_SCHEDULES ?= 20
CHAOS_SEED ?= 1
CHAOS_JOBS ?= 1
.PHONY: chaos
chaos: $(STAMP) ## seeded fault schedules against the local stack; invariants checked (CHAOS_SCHEDULES, CHAOS_SEED, CHAOS_JOBS)
	@$(BIN)/ohip-relay local chaos --schedules $(CHAOS_SCHEDULES) --seed $(CHAOS_SEED) --jobs $(CHAOS_JOBS)

.PHONY: chaos-fleet
chaos-fleet: $(STAMP) ## fleet schedules (relays killed and started, registry changes); invariants per chain (CHAOS_SCHEDULES, CHAOS_SEED, CHAOS_JOBS)
	@$(BIN)/ohip-relay local chaos --fleet --schedules $(CHAOS_SCHEDULES) --seed $(CHAOS_SEED) --jobs $(CHAOS_JOBS)

# The benchmark (docs/benchmarks.md): its own pins (chart, profiler) go into .venv beside the project's.
# BENCH_SCALE=0.2 for a quicker run; BENCH_PROFILE=1 samples the relay with py-spy.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	@touch $@

.PHONY: bench
bench: $(BENCH_STAMP) ## throughput, latency, memory and catch-up side by side; results in bench/results/
	@$(BIN)/python -m bench.run
	@$(BIN)/python -m bench.hot_path
	@$(BIN)/python -m bench.seen_cost
	@$(BIN)/python -m bench.fleet

# -- infrastructure lint, build and deploy (template.yaml) ------------------------------------
# The tools live in their own virtual environments, pinned, installed once per machine (stamp files):
# aws-sam-cli and cfn-lint together; checkov apart (it pins an old `packaging`).
LINT_VENV ?= .venv-lint
CHECKOV_VENV ?= .venv-checkov
LINT_STAMP := $(LINT_VENV)/.installed-cfn-lint-1.58.0-sam-1.170.0
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-checkov-3.3.0
SAM := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-$${AWS_REGION:-us-east-1}} $(LINT_VENV)/bin/sam
# `sam build` needs the Lambda runtime's interpreter (python3.12) on PATH; pyenv's is found too.
PY312_DIR ?= $(shell p=$$(pyenv prefix 3.12 2>/dev/null || pyenv prefix 3.12.1 2>/dev/null) && [ -x "$$p/bin/python3.12" ] && echo "$$p/bin")
SAM_BUILD_PATH = $(if $(PY312_DIR),$(PY312_DIR):)$(PATH)
STACK_NAME ?= ohip-relay

# A dirty tree gets its own image tag: ECR tags are immutable, and an unchanged commit is not rebuilt.
IMAGE_TAG ?= $(shell t=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev); \
  [ -z "$$(git status --porcelain 2>/dev/null)" ] && echo $$t || echo $$t-dirty-$$(date +%Y%m%d%H%M%S))
# `--parameter-overrides` on the command line replaces samconfig.toml's: read them and add the image.
export SAMCONFIG_OVERRIDES := import shlex, tomllib; \
  p = tomllib.load(open("samconfig.toml", "rb")).get("default", {}).get("deploy", {}).get("parameters", {}); \
  v = p.get("parameter_overrides", []); v = v.split() if isinstance(v, str) else v; \
  print(" ".join(shlex.quote(x) for x in v))

$(LINT_STAMP):
	@echo "setting up $(LINT_VENV): cfn-lint, aws-sam-cli (once; about a minute)"
	@rm -rf $(LINT_VENV)
	@$(PYTHON) -m venv $(LINT_VENV)
	@$(LINT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(LINT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check cfn-lint==1.58.0 aws-sam-cli==1.170.0
	@touch $@

$(CHECKOV_STAMP):
	@echo "setting up $(CHECKOV_VENV): checkov (once; about a minute)"
	@rm -rf $(CHECKOV_VENV)
	@$(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check checkov==3.3.0
	@touch $@

linters: ## install the pinned lint tools (once per machine, the three environments in parallel)
	@$(MAKE) --no-print-directory -j3 $(STAMP) $(LINT_STAMP) $(CHECKOV_STAMP)

lint: linters ## ruff, mypy, cfn-lint, sam validate --lint, checkov (all offline)
	@$(BIN)/ruff check shared local functions tests bench
	@$(BIN)/ruff format --check --quiet shared local functions tests bench
	@$(BIN)/mypy
	@$(LINT_VENV)/bin/cfn-lint template.yaml
	@$(SAM) validate --lint --template template.yaml
	@CKV_SKIP_PACKAGE_UPDATE_CHECK=true $(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation \
	  --file template.yaml

build: $(LINT_STAMP) ## sam build: the poll Lambda, the example consumer and the shared layer (offline)
	@[ -n "$(PY312_DIR)" ] || command -v python3.12 >/dev/null \
	  || { echo "sam build needs python3.12 on PATH (the Lambda runtime); e.g. 'pyenv install 3.12'" >&2; exit 1; }
	@PATH="$(SAM_BUILD_PATH)" $(SAM) build --template template.yaml

deploy: build ## push the stream consumer image to ECR, then sam deploy (AWS credentials, Docker; docs/deploy.md)
	@command -v docker >/dev/null || { echo "deploy needs Docker (buildx) to build the container image" >&2; exit 1; }
	@command -v aws >/dev/null || { echo "deploy needs the AWS CLI to reach ECR" >&2; exit 1; }
	@set -euo pipefail; tag=$(IMAGE_TAG); \
	  region=$${AWS_REGION:-$$(aws configure get region || true)}; \
	  [ -n "$$region" ] || { echo "set AWS_REGION (or a default region in the AWS CLI profile)" >&2; exit 1; }; \
	  account=$$(aws sts get-caller-identity --query Account --output text); \
	  repo=$(STACK_NAME)-stream; registry=$$account.dkr.ecr.$$region.amazonaws.com; image=$$registry/$$repo:$$tag; \
	  aws ecr describe-repositories --region $$region --repository-names $$repo >/dev/null 2>&1 \
	    || aws ecr create-repository --region $$region --repository-name $$repo --image-tag-mutability IMMUTABLE \
	         --image-scanning-configuration scanOnPush=true --encryption-configuration encryptionType=AES256 >/dev/null; \
	  if aws ecr describe-images --region $$region --repository-name $$repo --image-ids imageTag=$$tag >/dev/null 2>&1; then \
	    echo "image $$image is already in ECR"; \
	  else \
	    aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin $$registry; \
	    docker buildx build --platform linux/arm64 --provenance=false -f functions/stream_consumer/Dockerfile -t $$image --push .; \
	  fi; \
	  eval "set -- $$($(PYTHON) -c "$$SAMCONFIG_OVERRIDES")"; \
	  $(SAM) deploy --stack-name $(STACK_NAME) --region $$region --parameter-overrides "$$@" ContainerImageUri=$$image

check: lint test ## what CI runs

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam
