# The two commands of the quick start: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup alertmanager chromium helm test test-unit test-frameworks demo stop bench clean help

help:
	@echo "make demo   - set up and run the whole stack with live data (dashboard, alerts); Ctrl-C stops it"
	@echo "make test   - set up and run the whole test suite against the real services"
	@echo "make stop   - stop the local services started by make demo"
	@echo "make test-frameworks - the Lightning, transformers, Keras and torch integrations with the real libraries (installs ~7.5 GB)"
	@echo "make helm   - build helm v4 once (the Helm chart's tests; minutes the first time)"
	@echo "make bench  - every benchmark in bench/ in its quick mode (~20 min; figures, logs and manifest under bench/results/<date>-<commit>/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) and installing trainmon with its server and test extras..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[server,test,demo]"
	@touch $@

alertmanager:
	./deploy/alertmanager/install.sh

# Debian's headless-capable Chromium and nginx, for the dashboard's browser and login tests. nginx's
# package would start it on 0.0.0.0:80: a policy-rc.d that refuses every start is in place while it
# installs (the tests run their own nginx on loopback).
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || { echo "installing Debian's chromium and nginx (browser and login tests)..."; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  NOSTART=$$( [ -e /usr/sbin/policy-rc.d ] || echo yes ); \
	  if [ -n "$$NOSTART" ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; $$SUDO chmod 755 /usr/sbin/policy-rc.d; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium nginx; rc=$$?; \
	  [ -z "$$NOSTART" ] || $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$rc; }

# helm v4 for the chart's offline tests (tests/unit/test_helm_chart.py), built once from the Go
# module proxy into ~/.cache/trainmon/tools (~4-6 min; later runs are a no-op). Needs Go 1.26+.
helm:
	./deploy/helm/install-helm.sh

# The unit tests on both cores (pytest-xdist: independent, CPU-bound, ~60 s instead of ~100), then the
# integration tests in two lanes: those that run workers under load or time the real services one at a
# time, as the whole suite ran before, and beside them the rest, a file at a time (tests/conftest.py,
# BESIDE_THE_TIMED_LANE).
test: setup alertmanager chromium helm
	$(BIN)/python -m pytest tests/unit -n 2
	$(BIN)/python -m pytest --ignore=tests/unit -n 2 --dist loadfile

# The framework integrations' tests (tests/frameworks; docs/integrations.md): torch, Lightning,
# transformers and Keras on its JAX, torch and TensorFlow backends, on CPU. Heavy, so not in `make test`:
# ~3.5 GB to download, ~7.5 GB on disk (PyPI's torch pulls the CUDA wheels), 1.5-2 min to install.
# Under CI=true a framework that fails to import fails its tests instead of skipping them.
FRAMEWORKS_STAMP := $(VENV)/.installed-frameworks

$(FRAMEWORKS_STAMP): $(STAMP) pyproject.toml
	@echo "test-frameworks: installing torch, lightning, transformers, keras, jax and tensorflow-cpu (~3.5 GB, once)..."
	$(BIN)/python -m pip install --quiet -e ".[server,test,demo,frameworks-test]"
	@touch $@

test-frameworks: $(FRAMEWORKS_STAMP) alertmanager
	TRAINMON_FRAMEWORK_TESTS=1 $(BIN)/python -m pytest tests/frameworks

test-unit: setup
	$(BIN)/python -m pytest tests/unit -n 2

demo: setup alertmanager
	$(BIN)/trainmon demo

stop: setup
	$(BIN)/trainmon services stop

# Every benchmark, quick, one after another (bench/run_all.py --help: --only, --skip, --full, --publish).
# The peers' benchmarks need .venv-bench (bash bench/setup_peers.sh [--frameworks]); without it they are
# reported as skipped, with that command.
bench: setup alertmanager chromium
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .trainmon .pytest_cache
