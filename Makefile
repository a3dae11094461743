# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/demo.toml

.PHONY: run test venv web-venv system-deps clean bench

# System tools the end-to-end tests drive for real (curl, setpriv; systemd's
# socket activator and unit checker, which work without systemd as PID 1; the
# browser the console's tests drive through Playwright, never a downloaded one; the Redis
# server the fleet tests start on a temporary Unix socket, tests/fleet/conftest.py).
# Installed with apt-get only when missing, so a machine that has them needs no root.
SYSTEM_TOOLS := curl:curl setpriv:util-linux systemd-socket-activate:systemd systemd-analyze:systemd \
	chromium:chromium redis-server:redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall when the package metadata changes (editable install: code edits need nothing).
# The daemon extra: a bare `pip install pymgr` is the light client (docs/install.md).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[daemon,console]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[daemon,console,test]'
	touch $@

venv: $(VENV)/.installed

# The daemon, and the web console next to it on 127.0.0.1:8765 (docs/console.md); the
# console's demo account and its password are made on the first run and printed.
CONSOLE_CONFIG ?= examples/console.toml

# The console acts for people as the daemon's delegate: www-data when run as root (the console
# becomes it), else whoever runs make run, named in a copy of the config that console_demo.py
# writes (var/demo.run.toml) and prints; the daemon serves what it prints.
run: $(VENV)/.installed
	mkdir -p var
	config=$$($(BIN)/python examples/console_demo.py $(CONFIG)) || exit 1; \
	$(BIN)/pymgr console --config $(CONSOLE_CONFIG) & console=$$!; \
	trap 'kill $$console 2>/dev/null' EXIT INT TERM; \
	$(BIN)/pymgr serve --config "$$config"

system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The public API, type-checked under --strict: what `import pymgr` re-exports
# (and the modules that define it) and pymgr.client; all of src/ is checked
# with the settings in pyproject.toml.
PUBLIC_API := src/pymgr/__init__.py src/pymgr/errors.py src/pymgr/core/identity.py \
	src/pymgr/core/registry.py src/pymgr/_sse.py src/pymgr/client

# The examples, type-checked under --strict as a user's code would be: the
# scripts of examples/ (client_typed.py is the client's type test) and each web
# app. They are checked with the python of .venv-web (--python-executable),
# where the frameworks live (FastAPI and Flask ship their types; Django's are
# django-stubs, which only this check needs, so it is installed here and not in
# the app's requirements). One mypy per app: each is a program of its own
# (two have an app.py). pyproject.toml names the untyped modules mypy may skip,
# so a missing stub package fails the check instead of turning into Any.
EXAMPLES_TYPED := "$(wildcard examples/*.py)" $(wildcard examples/web/*_app)
WEB_TYPE_STUBS := django-stubs

# The example web apps (examples/web/, docs/web-apps.md) in a venv of their own:
# the light client (pymgr without its daemon extra) and their requirements files,
# nothing else, so that the tests that run them (tests/test_web_apps.py) prove it is enough.
# `-e .` satisfies the `pymgr` line of each requirements file.
WEB_VENV := .venv-web
WEB_REQUIREMENTS := $(wildcard examples/web/*/requirements.txt)

$(WEB_VENV)/.installed: pyproject.toml $(WEB_REQUIREMENTS)
	$(PYTHON) -m venv $(WEB_VENV)
	$(WEB_VENV)/bin/pip install -q -e . $(addprefix -r ,$(WEB_REQUIREMENTS))
	touch $@

web-venv: $(WEB_VENV)/.installed

$(WEB_VENV)/.typed: $(WEB_VENV)/.installed
	$(WEB_VENV)/bin/pip install -q $(WEB_TYPE_STUBS)
	touch $@

# Most of the suite's time is spent waiting on real daemons, browsers and Redis, so it runs on
# several workers (pytest-xdist), a module's tests on one worker so that module fixtures start once.
# PYTEST_WORKERS= runs it in one process.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadscope

test: $(VENV)/.test-installed $(WEB_VENV)/.installed $(WEB_VENV)/.typed system-deps
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy
	$(BIN)/mypy --strict $(PUBLIC_API)
	for target in $(EXAMPLES_TYPED); do \
	  $(BIN)/mypy --strict --python-executable $(WEB_VENV)/bin/python $$target || exit 1; \
	done
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Benchmarks against the peers (docs/performance.md): a venv of their own, with
# what they compare against (supervisor, gevent, RQ, Celery) and the web console; then the task,
# security, console and fleet benches of bench/ (the fleet's starts its own redis-server, hence
# system-deps). Under 12 minutes on 2 cores.
BENCH_VENV := .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_ARGS ?=

$(BENCH_BIN)/python:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install -q --upgrade pip

$(BENCH_VENV)/.installed: pyproject.toml | $(BENCH_BIN)/python
	$(BENCH_BIN)/pip install -q -e '.[daemon,console,bench]'
	touch $@

bench: $(BENCH_VENV)/.installed system-deps
	$(BENCH_BIN)/python -m bench.run $(BENCH_ARGS)
	@status=0; for bench in bench_tasks bench_security bench_console bench_fleet; do \
	  echo "== bench/$$bench.py"; $(BENCH_BIN)/python -m bench.$$bench || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) $(WEB_VENV) var build src/*.egg-info
