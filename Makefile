# The two commands of the quick start: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup alertmanager test test-unit demo stop bench clean help

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

test: setup alertmanager
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
