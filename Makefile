# Two entry points for a fresh machine with Python 3.11+ and make: `make run`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The compiled build (see build-compiled below), which the servers of `make run*` use.
COMPILED := build/compiled
RUN_COMPILED := PYTHONPATH=$(abspath $(COMPILED))

.PHONY: run run-wsgi run-asgi test lint typecheck pytest pytest-portable build-compiled \
	pytest-compiled clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The example Django site on aserve through `manage.py runserver` (the plugin is listed in its
# INSTALLED_APPS); `make run-wsgi` and `make run-asgi` serve the plain hello-world examples.
# All three on the compiled build (pure Python where there is no C compiler).
run: $(COMPILED)/.built
	cd examples/djangoproject && ../../$(BIN)/python manage.py migrate --noinput -v 0 \
		&& $(RUN_COMPILED) ../../$(BIN)/python manage.py runserver 127.0.0.1:8000

run-wsgi: $(COMPILED)/.built
	cd examples && $(RUN_COMPILED) ../$(BIN)/aserve hello_wsgi:app --reload --host 127.0.0.1 \
		--port 8000

run-asgi: $(COMPILED)/.built
	cd examples && $(RUN_COMPILED) ../$(BIN)/aserve hello_asgi:app --reload --host 127.0.0.1 \
		--port 8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# -rs prints why each skipped test skipped: a machine without Chromium, say, sees that the
# browser test did not run and what to install for it.
pytest: $(STAMP)
	$(BIN)/pytest -q -rs

# The reload and signal suites again through the paths macOS and Windows take, forced on Linux
# (README, Platforms), and the main server suites on the asyncio loop that forces; tests marked
# `both` ran that way already in `pytest`. The whole suite so:
# `ASERVE_PORTABLE=1 .venv/bin/pytest -q`.
PORTABLE_TESTS := tests/test_reload.py tests/test_reload_browser.py tests/test_reload_options.py \
	tests/test_reload_ipc.py tests/test_django_reload.py tests/test_signals.py tests/test_portable.py \
	tests/test_asgi.py tests/test_wsgi.py tests/test_server_api.py tests/test_lifespan.py \
	tests/test_websocket.py tests/test_hardening.py
pytest-portable: $(STAMP)
	ASERVE_PORTABLE=1 $(BIN)/pytest -q -rs -k 'not native' $(PORTABLE_TESTS)

# The compiled build (setup.py: the hot modules through mypyc) in a copy of the tree, so that
# the editable install in $(VENV) stays pure and an edit is never shadowed by a stale .so: the
# sources as they are now (committed or not), plus the extension modules of a wheel built from
# them. Tests run there import it, and so do the servers they start (`python -m aserve` from
# the copy's root). Run from the copy for a benchmark, or put it on PYTHONPATH:
# `PYTHONPATH=build/compiled python -m aserve ...` (`aserve --version` says which build runs).
# Rebuilt when a source changes. Without a C compiler it is the pure package, and
# `pytest-compiled` says so and skips.
SOURCES := $(shell find aserve tests examples benchmarks -type f -not -path '*/__pycache__/*') \
	setup.py pyproject.toml
$(COMPILED)/.built: $(SOURCES) | $(STAMP)
	rm -rf $(COMPILED)
	mkdir -p $(COMPILED)
	tar -cf - --exclude=__pycache__ aserve tests examples benchmarks setup.py pyproject.toml \
		README.md ARCHITECTURE.md BENCHMARKS.md | tar -xf - -C $(COMPILED)
	# What the tests find beside the repository (the request corpus), beside the copy too.
	if [ -d ../shared ]; then ln -sfn "$(abspath ../shared)" build/shared; fi
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(COMPILED)/dist ./$(COMPILED)
	$(BIN)/python -c 'import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); \
		w.extractall(sys.argv[2], [n for n in w.namelist() if n.endswith((".so", ".pyd"))])' \
		$(COMPILED)/dist/aserve-*.whl $(COMPILED)
	cd $(COMPILED) && ../../$(BIN)/python -m aserve --version
	touch $@

build-compiled: $(COMPILED)/.built

# The whole suite again against the compiled build (CI runs both: compiled code enforces
# types at run time, so some failures show only there). PYTHONPATH: the servers that tests
# start from a project directory (the reload suites) import the compiled build too.
pytest-compiled: $(COMPILED)/.built
	@if cd $(COMPILED) && ../../$(BIN)/python -m aserve --version | grep -q '(compiled)'; then \
		$(RUN_COMPILED) ../../$(BIN)/pytest -q -rs -p no:cacheprovider; \
	else \
		echo "pytest-compiled: skipped, no compiled build (no C compiler?)"; \
	fi

test: lint typecheck pytest pytest-portable pytest-compiled

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache
