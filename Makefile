# Set-up commands. `make demo` runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip
STAMP   = $(VENV)/.installed
DEMO    = $(VENV)/.installed-demo

.PHONY: install demo test lint bench pathologies clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,data]'
	touch $(STAMP) $(DEMO)

# the demo needs only the library and scikit-learn's bundled data sets
$(DEMO): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[data]'
	touch $(DEMO)

install: $(STAMP)

demo: $(DEMO)
	$(BIN)/vitalstats doctor

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

# the diagnoses' recall and false-alarm rate on real architectures (about 15 minutes)
pathologies: $(STAMP)
	$(BIN)/python benchmarks/pathologies/run.py --jobs 2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
