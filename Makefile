# ferroloop developer tasks.  `make help` lists them; `make test` is the whole suite.
#
# Everything Python runs from .venv (created by `make venv`), so nothing installed by
# hand on the machine is needed beyond python3 (3.11) and the Rust toolchain.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.ferroloop-deps.stamp

# Tools plus what the uvloop conformance suite imports (see ../shared/conformance).
# ruff is pinned so that `make lint` does not change verdict when ruff is released.
VENV_PKGS := 'maturin>=1.16,<2' 'pytest>=8' 'ruff==0.17.6' \
	'uvloop==0.23.0' pyOpenSSL psutil 'aiohttp>=3.10.5' \
	'uvicorn>=0.36' 'websockets>=15' 'anyio>=4.9' 'httpx>=0.28' 'starlette>=0.41'

# Python folders that exist (bench/ or scripts/ may be empty or absent early on).
PY_DIRS := $(wildcard python tests scripts bench)

# Conformance modules (scripts/conformance.py has the same default); override with
# `make conformance MODULES="test_base test_dns"`.
MODULES ?=
CONFORMANCE_ARGS ?=

.PHONY: help venv dev test test-rust test-py test-backends conformance lint fmt bench clean

help: ## List the targets with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## Create .venv with maturin, pytest, ruff and the conformance deps

$(VENV_STAMP): Makefile
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check $(VENV_PKGS)
	@touch $@

dev: venv ## Build ferroloop (release) and install it into .venv
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/maturin develop --release

test: test-rust test-py conformance test-backends ## Run the whole suite: Rust, pytest, uvloop conformance, every backend

test-rust: ## Rust unit and integration tests of ferroloop-core
	cargo test -p ferroloop-core
	cargo test -p ferroloop-py --lib

test-py: dev ## Python tests (tests/) against the installed build
	@rc=0; $(VPY) -m pytest tests -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test-py: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

conformance: dev ## uvloop's test suite on ferroloop vs asyncio; fails on any regression
	$(VPY) scripts/conformance.py --python $(VPY) \
		$(if $(strip $(MODULES)),--modules $(MODULES)) $(CONFORMANCE_ARGS)

test-backends: dev ## pytest and uvloop's suite again on every other backend this machine offers
	@backends=$$($(VPY) -c "import ferroloop; print(' '.join(b for b in ferroloop.backends() if b != 'epoll'))"); \
	for b in $$backends; do \
		echo "== backend $$b"; \
		FERROLOOP_BACKEND=$$b $(VPY) -m pytest tests -q || exit 1; \
		FERROLOOP_BACKEND=$$b $(VPY) scripts/conformance.py --python $(VPY) \
			--baseline-json target/conformance/baseline.json || exit 1; \
	done

lint: venv ## cargo fmt --check, clippy -D warnings, ruff check and ruff format --check
	cargo fmt --all -- --check $(if $(CI),--color never)
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)

fmt: venv ## Format Rust (cargo fmt) and Python (ruff format, import sorting)
	cargo fmt --all
	$(VENV)/bin/ruff check --select I --fix $(PY_DIRS)
	$(VENV)/bin/ruff format $(PY_DIRS)

bench: dev ## Run the benchmarks (python -m ferroloop.bench); installs wrk for the HTTP family
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| echo "wrk could not be installed: the http family will be skipped"
	$(VPY) -m ferroloop.bench

clean: ## Remove build outputs, caches and .venv
	cargo clean
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
	find python -name '*.so' -delete
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
