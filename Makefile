# ferroloop developer tasks.  `make help` lists them; `make test` is the whole suite.
#
# One venv and one build per CPython: PY picks the version (default 3.11, venv .venv; other
# versions .venv-3.12 ... .venv-3.15, built in target/py3.1x).  scripts/pythons.sh provides the
# interpreters (pyenv's 3.12/3.13, Debian sid's 3.14/3.15), so nothing installed by hand is
# needed beyond python3 and the Rust toolchain.  `make test PY=3.14` is not a thing: `make test`
# runs every version; `make test-version PY=3.14` runs one.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

#: The CPython versions the project supports and tests, oldest first.
PYTHONS := 3.11 3.12 3.13 3.14 3.15
PY ?= 3.11
VENV := $(if $(filter 3.11,$(PY)),.venv,.venv-$(PY))
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.ferroloop-deps.stamp
# One cargo target folder per version: PyO3 rebuilds whenever the interpreter changes.
export CARGO_TARGET_DIR ?= $(CURDIR)/target/py$(PY)
#: PyO3's view of a free-threaded CPython 3.14 (the file format takes no comments); compile-only.
FT_CFG := $(CURDIR)/scripts/pyo3-ft-3.14.cfg

# Tools plus what uvloop's test suite imports (scripts/conformance.py).
# ruff and mypy are pinned so that `make lint` does not change verdict when they are released.
VENV_PKGS := 'maturin>=1.16,<2' 'pytest>=8' 'ruff==0.17.6' 'mypy==2.4.1' \
	'uvloop==0.23.0' pyOpenSSL psutil 'aiohttp>=3.10.5' \
	'uvicorn>=0.36' 'websockets>=15' 'anyio>=4.9' 'httpx>=0.28' 'starlette>=0.41' \
	'mkdocs==1.6.1'

# Python folders that exist (bench/ or scripts/ may be empty or absent early on).
PY_DIRS := $(wildcard python tests scripts bench examples)

# Conformance modules (scripts/conformance.py has the same default); override with
# `make conformance MODULES="test_base test_dns"`.
MODULES ?=
CONFORMANCE_ARGS ?=

.PHONY: help pythons venv dev test test-version test-rust check-ft test-py test-backends valgrind soak fuzz test-asan miri \
	conformance lint fmt bench docs wheels clean

help: ## List the targets with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Versions for `make wheels` (empty: scripts/wheels.sh's default, 3.11-3.15).
WHEEL_VERSIONS ?=

wheels: ## Release wheels (manylinux2014 via zig) per CPython into dist/, each installed in a fresh venv and demo-run
	scripts/wheels.sh $(WHEEL_VERSIONS)

pythons: ## Provide CPython 3.12-3.15 (scripts/pythons.sh) and print where each is
	scripts/pythons.sh

venv: $(VENV_STAMP) ## Create the venv of PY (default 3.11) with maturin, pytest, ruff and the test deps

$(VENV_STAMP): Makefile
	scripts/pythons.sh venv $(PY) $(VENV) >/dev/null
	$(VPY) -m pip install -q --disable-pip-version-check $(VENV_PKGS)
	@touch $@

dev: venv ## Build ferroloop (release) for PY and install it into its venv
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
		$(VENV)/bin/maturin develop --release

test: test-rust check-ft ## The whole suite: Rust tests, then pytest and uvloop's suite on every CPython, then every backend, then valgrind
	@failed=""; for v in $(PYTHONS); do \
		echo "== CPython $$v"; \
		$(MAKE) --no-print-directory PY=$$v CARGO_TARGET_DIR=$(CURDIR)/target/py$$v test-version \
			|| failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test: failed on CPython$$failed" >&2; exit 1; fi
	$(MAKE) --no-print-directory test-backends
	$(MAKE) --no-print-directory valgrind

test-version: test-py conformance ## pytest and uvloop's suite on one CPython: make test-version PY=3.14

test-rust: ## Rust unit and integration tests of ferroloop-core and the binding
	cargo test -p ferroloop-core
	cargo test -p ferroloop-py --lib

check-ft: ## The binding against free-threaded CPython 3.14: clippy and its Rust tests (no 3.14t needed)
	PYO3_CONFIG_FILE=$(FT_CFG) CARGO_TARGET_DIR=$(CURDIR)/target/ft \
		cargo clippy -p ferroloop-py --all-targets -- -D warnings
	PYO3_CONFIG_FILE=$(FT_CFG) CARGO_TARGET_DIR=$(CURDIR)/target/ft \
		cargo test -p ferroloop-py --lib

test-py: dev ## Python tests (tests/) against the installed build
	@rc=0; $(VPY) -m pytest tests -q --junitxml=target/pytest-$(PY).xml || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test-py: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

conformance: dev ## uvloop's test suite on ferroloop vs asyncio; fails on any regression
	$(VPY) scripts/conformance.py --python $(VPY) --work-dir target/conformance/$(PY) \
		$(if $(strip $(MODULES)),--modules $(MODULES)) $(CONFORMANCE_ARGS)

test-asan: venv ## pytest (tests/) on an AddressSanitizer build of the extension (nightly Rust, target/asan), one process per file; ASAN_LEAKS=1 adds the leak check
	ASAN_PYTHON=$(CURDIR)/$(VPY) scripts/asan.sh

miri: ## Miri on ferroloop-core's pure modules (ready, timer and write queues, clock, io_uring buffer ring)
	scripts/miri.sh

#: `make fuzz N=500 SEED=7 FUZZ_BACKEND=io_uring`: programs per backend, first seed, backend(s).
N ?= 200
SEED ?= 0
FUZZ_BACKEND ?= all

fuzz: dev ## Differential fuzzer: N random loop-API programs per backend, asyncio vs ferroloop (PY)
	nice -n 10 $(VPY) scripts/fuzz/fuzz.py --programs $(N) --seed $(SEED) \
		--backend $(FUZZ_BACKEND) --python $(VPY)

soak: dev ## 10,000 connections for 10 minutes per backend: RSS, fds and throughput every 10 s (not in CI)
	$(VPY) scripts/soak.py $(SOAK_ARGS)

valgrind: dev ## A smoke program under valgrind's memcheck on every backend (PY): no error beyond CPython's own
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(VPY) scripts/valgrind_check.py $$($(VPY) -c "import ferroloop; print(' '.join(ferroloop.backends()))")

test-backends: dev ## pytest and uvloop's suite again on every other backend this machine offers (PY)
	@backends=$$($(VPY) -c "import ferroloop; print(' '.join(b for b in ferroloop.backends() if b != 'epoll'))"); \
	for b in $$backends; do \
		echo "== backend $$b"; \
		FERROLOOP_BACKEND=$$b $(VPY) -m pytest tests -q || exit 1; \
		FERROLOOP_BACKEND=$$b $(VPY) scripts/conformance.py --python $(VPY) \
			--work-dir target/conformance/$(PY)-$$b \
			--baseline-json target/conformance/$(PY)/baseline.json || exit 1; \
	done

# mypy.stubtest checks python/ferroloop/_ferroloop.pyi against the extension built by `make dev`;
# mypy --strict checks typed user code (examples/typed.py) against the package's types.
lint: venv ## cargo fmt --check, clippy -D warnings, ruff check and format --check, mypy stubtest and --strict
	cargo fmt --all -- --check $(if $(CI),--color never)
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(VPY) -m mypy.stubtest ferroloop._ferroloop --allowlist scripts/stubtest-allowlist.txt
	$(VPY) -m mypy --strict examples/typed.py

fmt: venv ## Format Rust (cargo fmt) and Python (ruff format, import sorting)
	cargo fmt --all
	$(VENV)/bin/ruff check --select I --fix $(PY_DIRS)
	$(VENV)/bin/ruff format $(PY_DIRS)

bench: dev ## Run the benchmarks (python -m ferroloop.bench, PY picks the CPython); installs wrk, rloop and zuvloop (3.14+)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| echo "wrk could not be installed: the http family will be skipped"
	@$(VPY) -c "import rloop" 2>/dev/null || $(VPY) -m pip install -q rloop \
		|| echo "rloop could not be installed: it will be skipped"
	@$(VPY) -c "import sys; sys.exit(sys.version_info < (3, 14))" || exit 0; \
		$(VPY) -c "import zuvloop" 2>/dev/null || $(VPY) -m pip install -q zuvloop \
		|| echo "zuvloop could not be installed: it will be skipped"
	$(VPY) -m ferroloop.bench

# mkdocs.yml at the root; docs/ holds the pages. --strict (with mkdocs.yml's `validation`) makes a
# broken link or anchor, or a page left out of the nav, fail the build, so CI catches rotting docs.
docs: venv ## Build the documentation site (mkdocs build --strict) into target/site
	$(VENV)/bin/mkdocs build --strict --site-dir target/site

clean: ## Remove build outputs, caches and .venv
	cargo clean
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
	find python -name '*.so' -delete
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
