# marble_nb — the two commands of the README, each self-sufficient on a fresh machine:
#   make demo   runs the main job on the embedded default data
#   make test   runs every test (what CI runs)
# Both create the virtual environment in .venv when it is missing or out of date.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv export lint clean-venv bench

venv: $(STAMP)

$(STAMP): settings.ini setup.py requirements/constraints.txt requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/marble-demo

test: $(STAMP)
	@PATH="$(abspath $(BIN)):$$PATH" bash scripts/test.sh

export: $(STAMP)
	$(BIN)/nbdev_export

lint: $(STAMP)
	$(BIN)/ruff check marble_nb tests benchmarks scripts
	$(BIN)/ruff format --check nbs tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps torchlogix==0.2.2
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
