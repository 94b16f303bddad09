# One entry point for people and CI. `make check` is the test command the README gives.
PY ?= $(shell ./.ci/find-python)
export PATH := $(HOME)/.local/bin:$(PATH)
UV_RUN = uv run --locked --python $(PY)

.PHONY: dev install check test-tools lint types test fix

# The whole stack on this machine (installs what is missing first).
dev:
	./scripts/dev.sh $(ARGS)

install:
	./.ci/bootstrap

# The test command (README): installs what the tests need if missing, then lint, types, tests.
check: test-tools lint types test

test-tools:
	./.ci/bootstrap --test-tools

lint:
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check .

types:
	$(UV_RUN) mypy

test:
	$(UV_RUN) pytest

fix:
	$(UV_RUN) ruff check --fix .
	$(UV_RUN) ruff format .
