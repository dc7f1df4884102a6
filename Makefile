# Two commands for a newcomer: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean certs fuzz

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,loadtest]'
	touch $(STAMP)

venv: $(STAMP)

## Set up and run the whole demo stack in the foreground (Ctrl-C stops it).
demo: $(STAMP)
	$(BIN)/gateway demo --conf conf/demo

## Set up and run every check: ruff, mypy --strict, the test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

## Fuzz every peer-bytes decoder (atheris): FUZZ_RUNS executions each, new inputs in var/fuzz.
FUZZ_RUNS ?= 100000
FUZZ_JOBS ?= 1
fuzz: $(STAMP)
	$(BIN)/python -m fuzz all --runs $(FUZZ_RUNS) --jobs $(FUZZ_JOBS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var
