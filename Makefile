# HEAN: `make run` starts the system, `make test` runs the whole suite.
# Both set up everything they need first (a .venv with the package built and installed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hean-installed
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(wildcard cpp_ext/*.cpp cpp_ext/*.hpp cpp_ext/*/*.cpp)

.PHONY: run test lint bench clean

run: $(STAMP)
	$(VENV)/bin/hean up

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "HEAN needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

# The extension is built by scikit-build-core; cmake and ninja come from PyPI, so a C++
# compiler is the only system requirement. Rebuilds are incremental (build/).
$(STAMP): $(BUILD_INPUTS) | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "scikit-build-core>=1.1.2" "pybind11>=3.1.0" "cmake>=4.4" "ninja>=1.13"
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	@touch $(STAMP)

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache
