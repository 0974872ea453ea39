# Two commands for a newcomer (README): `make run` (the app on the embedded synthetic dataset) and
# `make test` (the whole test suite). Both create the virtualenv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8501

.PHONY: run test test-slow test-all chromium install lock clean

# requirements.txt holds pyproject.toml's exact pins (`make lock` writes it): installing it first, then the
# package with --no-deps, gets exactly the pinned releases (never a newer torch).
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## requirements.txt again from pyproject.toml, after changing a dependency there.
lock:
	$(PYTHON) tools/lock_requirements.py

## The app (binds 127.0.0.1; see README to expose it). The demo (four runs, app/demo.py) starts by itself when there are none.
run: $(STAMP)
	$(PY) -m streamlit run streamlit_app.py --server.port $(PORT)

## The default test suite (slow tests excluded; `make test-all` includes them), after the linter.
test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest

## The slow tier alone (CI runs it after `make test`).
test-slow: $(STAMP) chromium
	$(PY) -m pytest -m slow

test-all: $(STAMP) chromium
	$(PY) -m pytest -m ""

## Debian's Chromium for the browser test; installed with apt-get when missing and we may. When apt cannot
## install it (another process holds the apt/dpkg lock for longer than APT_LOCK_WAIT seconds, no network), the
## tests still run and the browser test is skipped, saying why.
APT_LOCK_WAIT ?= 60
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT)
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    if ! { $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; }; then \
	      echo "could not install chromium (apt-get failed above: another process may hold the apt/dpkg lock):" \
	           "the browser test will be skipped"; \
	    fi; \
	  else \
	    echo "chromium is not installed: the browser test will be skipped (apt-get install chromium)"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
