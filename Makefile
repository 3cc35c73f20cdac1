# Two entry points for a fresh machine with Python 3.11+ and make: `make run`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run run-wsgi run-asgi test lint typecheck pytest pytest-portable clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The example Django site on aserve through `manage.py runserver` (the plugin is listed in its
# INSTALLED_APPS); `make run-wsgi` and `make run-asgi` serve the plain hello-world examples.
run: $(STAMP)
	cd examples/djangoproject && ../../$(BIN)/python manage.py migrate --noinput -v 0 \
		&& ../../$(BIN)/python manage.py runserver 127.0.0.1:8000

run-wsgi: $(STAMP)
	cd examples && ../$(BIN)/aserve hello_wsgi:app --reload --host 127.0.0.1 --port 8000

run-asgi: $(STAMP)
	cd examples && ../$(BIN)/aserve hello_asgi:app --reload --host 127.0.0.1 --port 8000

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

test: lint typecheck pytest pytest-portable

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
