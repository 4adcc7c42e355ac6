# edgepack: `make train export` builds the release, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_DEPS := pyproject.toml constraints.txt
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help train export bench bench-quick zoo demo browser test docs lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Data: set EDGEPACK_DATA_DIR (e.g. ../shared/data); see README.md."

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# One stamp per set of extras: installs happen once, again only when the pins change.
$(VENV)/.stamp-%: $(STAMP_DEPS) | $(PY)
	$(PIP) install --quiet -c constraints.txt -e ".[$*]"
	@touch $@

train: $(VENV)/.stamp-train ## train both default CNNs (models/<dataset>/model.keras)
	$(PY) -m train --dataset all

export: $(VENV)/.stamp-train ## export and parity-gate every artifact of both datasets, all or nothing (QAT: python -m export --qat)
	$(PY) -m export --dataset all --all-or-nothing --models-dir models

bench: $(VENV)/.stamp-train ## CPU latency benchmarks of every artifact -> reports/bench-<dataset>.*
	$(PY) -m benchmarks

bench-quick: $(VENV)/.stamp-train ## a one-minute smoke run of the benchmarks
	$(PY) -m benchmarks --quick --out runs/bench-quick

zoo: $(VENV)/.stamp-train ## train briefly and export 15 keras.applications families -> docs/results/zoo.md (hours on a CPU)
	$(PY) -m export.zoo

demo: $(VENV)/.stamp-demo ## serve the web demo on http://127.0.0.1:7860 (examples from EDGEPACK_DATA_DIR)
	$(PY) -m demo

# The browser test drives Debian's Chromium; elsewhere this step fails softly and the test skips.
browser: ## install Debian's chromium for the browser test (once)
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
		echo "warning: could not install chromium; the browser test will be skipped"

# Two pytest workers, a test file each at a time: much of the suite is single-threaded Python (Keras
# tracing, the converters), so two share a 2-core machine well (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 2

test: $(VENV)/.stamp-train,demo,dev,docs browser ## run the test suite (the docs site's strict build included)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

docs: $(VENV)/.stamp-docs ## build the documentation site strictly into runs/site (docs/, mkdocs.yml)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(VENV)/.stamp-train,demo,dev,docs ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.stamp-train,demo,dev,docs ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove the virtual environment, caches, checkpoints and scratch runs
	rm -rf $(VENV) .pytest_cache .ruff_cache runs models/*/checkpoints models/*/rejected models/*/.staging-* models/*/.edgepack.lock
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
