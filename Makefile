# The two commands of the quick start: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup alertmanager chromium test test-unit demo stop bench clean help

help:
	@echo "make demo   - set up and run the whole stack with live data (dashboard, alerts); Ctrl-C stops it"
	@echo "make test   - set up and run the whole test suite against the real services"
	@echo "make stop   - stop the local services started by make demo"
	@echo "make bench  - run the benchmarks in bench/ (figures under bench/results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) and installing trainmon with its server and test extras..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[server,test,demo]"
	@touch $@

alertmanager:
	./deploy/alertmanager/install.sh

# Debian's headless-capable Chromium, for the dashboard's browser tests and page-load benchmark.
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium (browser tests)..."; \
	  $$( [ "$$(id -u)" -eq 0 ] || echo sudo ) apt-get update -qq && \
	  $$( [ "$$(id -u)" -eq 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: setup alertmanager chromium
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

demo: setup alertmanager
	$(BIN)/trainmon demo

stop: setup
	$(BIN)/trainmon services stop

bench: setup
	@mkdir -p bench/results
	$(BIN)/python bench/codec.py --json bench/results/codec.json

clean:
	rm -rf $(VENV) .trainmon .pytest_cache
