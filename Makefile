# webconf: one-command set-up on a fresh machine.
#   make demo   - create .venv, install, run a whole verified meeting (webconf demo)
#   make test   - create .venv, install, run the whole test suite (what CI runs); the store,
#                 service and API tests run on SQLite and on PostgreSQL (tests/backends.py)
#   make bench  - benchmarks beside their baselines (Kamailio, nginx); table + bench/results/
#   make lint   - ruff + mypy --strict (CI runs it before the tests)
#   make dev    - a dev deployment in .dev/ (PKI, keys, config), then `make serve`
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv sysdeps bench demo test test-fast lint dev serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,agents,fast]' || $(PY) -m pip install -q -e '.[dev,fast]' \
		|| $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests drive (baresip, linphonec, SIPp, PostgreSQL's initdb) and the
# baselines the bench smoke tests run (kamailio, nginx, wrk, h2load); skipped without root/apt.
sysdeps:
	bash scripts/system-deps.sh --bench

bench: $(STAMP) sysdeps
	$(PY) -m bench --update-readme

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/webconf demo

test: $(STAMP) sysdeps
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow"

# ruff over every Python file we ship or run; mypy --strict (pyproject) over the packages and bench/.
lint: $(STAMP)
	$(VENV)/bin/ruff check webconf conferencing focus clients bench tests
	$(VENV)/bin/mypy webconf conferencing focus clients bench

dev: $(STAMP)
	test -f .dev/webconf.toml || $(VENV)/bin/webconf init .dev

serve: dev
	$(VENV)/bin/webconf serve .dev

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache *.egg-info
