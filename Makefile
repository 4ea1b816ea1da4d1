# Cluster AI: the two commands of the README, and a few more.
#   make up     set up and run `pulumi up` of the dev stack (local file backend)
#   make test   set up what the tiers need (ci/setup.sh, cached), then run every tier

SHELL := /bin/bash
# Never print "Entering directory": users pipe `make plan ARGS=--json` into JSON tools.
MAKEFLAGS += --no-print-directory
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK ?= dev
STATE_DIR := $(CURDIR)/.pulumi-state
# The env file `make toolchain` writes (the offline Pulumi toolchain: docs/engine.md).
TOOLCHAIN_ENV := $(or $(CLUSTER_AI_CACHE),/var/cache/cluster-ai)/toolchain/env.sh
PASSPHRASE_FILE := $(STATE_DIR)/passphrase
# PULUMI_PYTHON_CMD: the program runs in this checkout's venv whichever language host
# runs it (the one `make toolchain` builds ignores Pulumi.yaml's virtualenv: docs/engine.md).
# Without a `pulumi` on PATH, the toolchain `make toolchain` built is used, if there is one.
TOOLCHAIN_SOURCE := if ! command -v pulumi >/dev/null 2>&1 && [ -f $(TOOLCHAIN_ENV) ]; then . $(TOOLCHAIN_ENV); fi;
PULUMI_ENV := PULUMI_BACKEND_URL=file://$(STATE_DIR) PULUMI_CONFIG_PASSPHRASE_FILE=$(PASSPHRASE_FILE) PULUMI_SKIP_UPDATE_CHECK=true PULUMI_PYTHON_CMD=$(CURDIR)/$(BIN)/python

.PHONY: up preview destroy check-tools stack-ready test setup test-only test-unit plan lint bench bench-converge deps env clean-venv policies-doc policies drift status lock mutation images toolchain ollama webui

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) >&2

# Recipes whose targets print what users parse (plan/policies/status --json, drift's
# report, env) run silently (`@`), and what their prerequisites print goes to stderr,
# so `make plan ARGS=--json | jq` sees only the JSON on stdout.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	@$(BIN)/python -m pip install --quiet --upgrade pip >&2
	@$(BIN)/python -m pip install --quiet -e '.[dev]' >&2
	@touch $@

deps: $(VENV)/.deps

# Fail early, and say what to install, when a prerequisite is missing.
define require_tools
	@$(TOOLCHAIN_SOURCE) command -v pulumi >/dev/null 2>&1 || { \
	  echo "error: the Pulumi CLI is not installed." >&2; \
	  echo "       install it: https://www.pulumi.com/docs/iac/download-install/ (curl -fsSL https://get.pulumi.com | sh)" >&2; \
	  echo "       or, without internet access, build it here: make toolchain (docs/engine.md)" >&2; \
	  exit 1; }
	@command -v docker >/dev/null 2>&1 || { \
	  echo "error: Docker is not installed: https://docs.docker.com/engine/install/" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { \
	  echo "error: the Docker engine is not running or this user cannot reach it (/var/run/docker.sock)." >&2; \
	  echo "       start it (sudo systemctl start docker) and make sure you may use it (docker group)." >&2; \
	  exit 1; }
endef

# State stays in this repository's .pulumi-state/ (git-ignored); secrets in it are
# encrypted with a passphrase generated once into .pulumi-state/passphrase (0600).
$(PASSPHRASE_FILE):
	@mkdir -p $(STATE_DIR) && chmod 700 $(STATE_DIR)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@
	@echo "generated a passphrase for local secrets in $@ (keep it: it decrypts this stack's secrets)" >&2

check-tools:
	$(call require_tools)

stack-ready: check-tools deps $(PASSPHRASE_FILE)
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) pulumi login file://$(STATE_DIR) >/dev/null
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) pulumi stack select $(STACK) 2>/dev/null || $(PULUMI_ENV) pulumi stack init $(STACK) >&2

# make itself always exits 2 when a recipe fails, whatever the command's code was:
# `exit_code` prints the command's own code and what it means (the Pulumi CLI's
# codes: 5 is a mandatory policy violated), so CI logs and users see the real one.
define exit_code
code=$$?; if [ $$code -ne 0 ]; then \
  case $$code in 2) why="config error";; 4) why="a resource failed";; 5) why="a mandatory policy is violated";; \
    6) why="no such stack";; 7) why="changes found";; 127) why="command not found";; *) why="failed";; esac; \
  echo "make $@: the command exited $$code ($$why); make itself exits 2" >&2; exit $$code; fi
endef

# up and preview apply the policy pack in policies/, as `python -m stacks up` does:
# a mandatory violation stops the update before anything changes.
# Through `python -m stacks`: the policy pack applied, a database dump before an update
# that touches the data, and a line in the audit log (docs/operations.md).
up: stack-ready
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) $(BIN)/python -m stacks up $(STACK) $(ARGS); $(exit_code)

preview: stack-ready
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) $(BIN)/python -m stacks preview $(STACK) $(ARGS); $(exit_code)

# Through `python -m stacks destroy`: it asks for the stack's name (ARGS=--yes=STACK in
# scripts) and writes the audit log.
destroy: stack-ready
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) $(BIN)/python -m stacks destroy $(STACK) $(ARGS)

# Every tier, on a fresh machine too: ci/setup.sh first installs, builds and starts what
# the tiers need (Debian packages, dockerd, the toolchain, Ollama, Open WebUI, the e2e
# images; cached outside the clone, so seconds when nothing changed), then the suite
# runs with the toolchain's env. `make test-only` runs the suite alone.
test: setup
	@$(MAKE) --no-print-directory test-only ARGS="$(ARGS)"

setup:
	bash ci/setup.sh

test-only: deps
	@if [ -f $(TOOLCHAIN_ENV) ]; then . $(TOOLCHAIN_ENV); fi; \
	  PULUMI_PYTHON_CMD=$(CURDIR)/$(BIN)/python $(BIN)/python -m pytest -n auto --dist loadscope $(ARGS)

test-unit: deps
	$(BIN)/python -m pytest tests/unit $(ARGS)

plan: deps
	@$(BIN)/python -m stacks plan $(STACK) $(ARGS)

# Operating a deployed stack (docs/operations.md): drift exits 7 when live state
# differs, status exits 1 when anything is not as declared, lock pins digests.
drift: stack-ready
	@$(TOOLCHAIN_SOURCE) $(PULUMI_ENV) $(BIN)/python -m stacks drift $(STACK) $(ARGS)

status: deps
	@$(BIN)/python -m stacks status $(STACK) $(ARGS)

lock: deps
	@$(BIN)/python -m stacks lock $(STACK) $(ARGS)

# Every policy's verdict on a stack, offline (exit 5 when a mandatory one is violated).
policies: deps
	@$(BIN)/python -m stacks plan $(STACK) --policies $(ARGS); $(exit_code)

# docs/policies.md, generated from policies/ (a test keeps it in sync).
policies-doc: deps
	$(BIN)/python -m policies.catalogue

# The scaling benchmark (not a test): prints figures against a floor measured in
# the same run, writes bench/results.json and docs/plan_scaling.png.
bench: deps
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/plan_scaling.py $(ARGS)
	@$(MAKE) --no-print-directory bench-converge ARGS="$(CONVERGE_ARGS)"

# The dev stack's cold up / no-op up / refresh / destroy on the real engine, beside
# `docker compose up --wait` / `down` of the same containers (needs `make toolchain
# images`, and no other cluster-ai stack on the engine: same ports). Builds Compose v2
# with ci/compose.sh; writes bench/converge.json and the converge table of
# docs/performance.md. `make bench-converge ARGS=--runs=2`; from `make bench`: CONVERGE_ARGS.
bench-converge: deps
	bash ci/compose.sh
	$(BIN)/python bench/converge.py $(ARGS)

# Images the e2e stack (Pulumi.e2e.yaml) runs, built here and pushed to the local
# registry on 127.0.0.1:5000; a second run skips what is unchanged (docs/images.md).
# The Ollama and Open WebUI images copy what `make ollama webui` built.
images: deps ollama webui
	bash ci/images.sh

# The Pulumi CLI, Python language host and random/tls/docker plugins built from Go
# modules, cached outside the clone (docs/engine.md); `make up` and the tests use it.
toolchain:
	bash ci/toolchain.sh

# The real applications the integration tier runs (cached outside the clone, see ci/versions.env).
ollama:
	bash ci/ollama.sh

webui:
	bash ci/webui.sh

# A mutation run (mutmut) over the modules issue 14 names, on a scratch copy of the
# checkout; prints the score. Not part of CI: hours on 2 cores (docs/testing.md).
mutation: deps
	bash ci/mutation.sh

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# `source <(make -s env)`: run pulumi by hand against the same local backend.
env:
	@echo "export PULUMI_BACKEND_URL=file://$(STATE_DIR)"
	@echo "export PULUMI_CONFIG_PASSPHRASE_FILE=$(PASSPHRASE_FILE)"
	@echo "export PULUMI_SKIP_UPDATE_CHECK=true"
	@echo "export PULUMI_PYTHON_CMD=$(CURDIR)/$(BIN)/python"

clean-venv:
	rm -rf $(VENV)
