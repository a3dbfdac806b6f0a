# densityformula: `make reproduce` (results into a report) and `make test` (the suite CI runs).
# Both create .venv when it is missing and install what they need.
#
# torch: the default pin lives here and only here.  Override it to keep or choose your own:
#   make test TORCH_SPEC="torch==2.5.1"     # another version
#   make test TORCH_SPEC=none               # keep whatever torch the environment already has
# A plain unpinned "torch" would download a multi-GB CUDA build; the pin avoids that.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.densityformula-installed
# The test suite runs on 2 workers with one thread each (as CI's 2-core machine does).
PYTEST_WORKERS ?= 2
REPRODUCE_ARGS ?= --quick

.PHONY: help install lint test test-fast reproduce reproduce-full figures validate bench clean

help:
	@echo "make reproduce   run every experiment (quick) into results/ with results/index.html"
	@echo "make test        the whole test suite (what CI runs)"
	@echo "make lint        ruff (style, imports, bugbear) and mypy --strict on the package (CI runs it)"
	@echo "make test-fast   skip tests marked slow"
	@echo "make figures     a full run, its figures copied to docs/figures/ (the README's reference figures)"
	@echo "make validate    every experiment's quick claims at seeds 0-4; writes docs/validation.md (not in make test)"
	@echo "make bench       run the benchmarks (writes nothing; see docs/benchmarks.md)"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(TORCH_SPEC)" != "none" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[test,notebooks,dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check densityformula experiments tests benchmarks
	$(VENV)/bin/mypy

# The report's browser test (tests/test_report_browser.py) needs Debian's chromium: `make test` installs it
# when it is missing and we are root with apt-get; where that fails the test skips and says why.
test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for tests/test_report_browser.py"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium: tests/test_report_browser.py will skip"; \
	fi
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) -q tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow" tests

reproduce: $(STAMP)
	$(VENV)/bin/densityformula reproduce $(REPRODUCE_ARGS) --out results

reproduce-full: $(STAMP)
	$(VENV)/bin/densityformula reproduce --full --out results

# the README's reference figures: a full run, its PNGs copied to docs/figures/
figures: $(STAMP)
	$(VENV)/bin/densityformula reproduce --full --out results/full
	mkdir -p docs/figures && cp results/full/*/*.png docs/figures/

validate: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/densityformula validate --seeds 0 1 2 3 4 \
		--out results/validation --write docs/validation.md

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
