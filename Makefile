# One command each: `make test` (set up + lint + tests), `make demo` (the paper's comparison).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo demo-full bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,examples]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_step.py

clean:
	rm -rf $(VENV) .pytest_cache
