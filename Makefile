# One command each: `make test` (set up + lint + tests), `make demo` (the paper's comparison);
# CI (.ci/run) runs `make test`, then `make docs`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= auto

.PHONY: test test-thorough package-check demo demo-full data bench docs docs-screenshots clean

# uv installs the same packages about 4x faster than pip (18 s against 69 s here); pip
# (with its own configuration, e.g. local wheels) if uv cannot be had or fails.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install -q uv && \
	  $(VENV)/bin/uv pip install -q --python $(PY) -e '.[test,examples]'; } || \
	{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e '.[test,examples]'; }
	touch $@

# Lint; type check (and every public name's type known); the tests and the doctests
# (pyproject's pytest options) on the newest releases (the venv); the built wheel and sdist,
# with the sdist's tests against the wheel on the lowest versions pyproject.toml declares.
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pyright --pythonpath $(PY) layerwise_optax
	PYTHONPATH=. $(PY) -m pyright --pythonpath $(PY) --verifytypes layerwise_optax --ignoreexternal
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal
	.ci/check_package.sh

# The property tests' thorough profile: 10,500 new random cases (`make test` runs the same
# 1,050 every time); a failure prints how to reproduce it.
test-thorough: $(VENV)/.installed
	LAYERWISE_OPTAX_PROPERTIES=thorough $(PY) -m pytest -q -n auto -p no:cacheprovider \
	  tests/test_core_properties.py

package-check: $(VENV)/.installed
	.ci/check_package.sh

# The docs site from docs/ (Sphinx, warnings as errors, a fresh build each time) into
# docs/_build/html; it fails when a public name has no docstring or no entry in docs/api.md.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[docs]' || $(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# Screenshots of the index, API and numerics pages in headless Chromium, to runs/docs/.
docs-screenshots: docs
	bash docs/screenshots.sh runs/docs

# The paper's MNIST protocol on Fashion-MNIST, six methods: 3 seeds x 1,000 iterations
# (7 minutes on 2 idle CPU cores); `make demo-full` is the paper's 10 seeds x 2,000.
DEMO_ARGS ?= --dataset fashion_mnist --workers 2

demo: $(VENV)/.installed data
	$(PY) -m experiments.paper $(DEMO_ARGS) --seeds 3 --iters 1000 --out runs/demo

demo-full: $(VENV)/.installed data
	$(PY) -m experiments.paper $(DEMO_ARGS) --seeds 10 --iters 2000 --out runs/fashion_mnist

# Debian's dataset-fashion-mnist package; elsewhere pass --data-dir or --download.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

data:
	@test -f $(FASHION_MNIST) || { \
	  echo "Installing Debian's dataset-fashion-mnist (Fashion-MNIST, offline) ..."; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist; \
	  else sudo -n apt-get install -y -q dataset-fashion-mnist; fi; } || { \
	  echo "Could not install it. Run: sudo apt-get install dataset-fashion-mnist"; \
	  echo "or: $(PY) -m experiments.paper --download (fetches and verifies the files)"; \
	  exit 1; }

# Optimizer-step cost against optax (~8 min on 2 CPU cores) and its short table (the
# README's); the committed figures in results/bench/ were made the same way.
bench: $(VENV)/.installed
	mkdir -p runs/bench
	bash -o pipefail -c '$(PY) -m benchmarks.bench_step --hlo --json runs/bench/cpu.json \
	  | tee runs/bench/cpu.md'
	$(PY) -m benchmarks.summary --json runs/bench/cpu.json --out runs/bench/summary.md

clean:
	rm -rf $(VENV) .pytest_cache docs/_build
