# The two commands of the README: `make demo` and `make test`. Both are idempotent: the
# virtualenv is rebuilt only when pyproject.toml or constraints.txt change, the stack's
# downloads are cached under .stack/ and ~/.m2, and running services are reused.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo smoke test install stack stack-down lint format typecheck unit integration clean \
	image-check

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
# Playwright (the browser tests) drives Debian's Chromium from `veilleuse stack up`: never a
# downloaded browser.
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet --constraint constraints.txt \
		--editable '.[dev]'
	@touch $(STAMP)

# kustomize renders k8s/ in the manifest tests: built from the Go module proxy (needs go).
KUSTOMIZE_VERSION := v5.7.1
$(BIN)/kustomize: | $(STAMP)
	GOBIN=$(abspath $(BIN)) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

install: $(STAMP) $(BIN)/kustomize

stack: install
	$(BIN)/veilleuse stack up
	$(BIN)/veilleuse setup

stack-down: install
	$(BIN)/veilleuse stack down

# The main job: a simulated nursing home through the whole pipeline, scored against its
# ground truth (`veilleuse smoke` remains the round trip through every service).
demo: stack
	$(BIN)/veilleuse demo --no-stack

smoke: stack
	$(BIN)/veilleuse smoke

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: stack
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test: stack lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Optional, not part of `test`: build the Dockerfile with buildah and run the image with podman
# on a debootstrapped stand-in for the python base (as root, Debian; k8s/README.md).
image-check:
	k8s/build-image-without-docker.sh

clean: stack-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
