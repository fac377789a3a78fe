# webconf: one-command set-up on a fresh machine.
#   make demo   - create .venv, install, run a whole verified meeting (webconf demo)
#   make test   - create .venv, install, run the whole test suite (what CI runs); the store,
#                 service and API tests run on SQLite and on PostgreSQL (tests/backends.py)
#   make bench  - benchmarks beside their baselines (Kamailio, nginx); table + bench/results/
#   make lint   - ruff + mypy --strict (CI runs it before the tests)
#   make dev    - a dev deployment in .dev/ (PKI, keys, config), then `make serve`
#   make web    - the browser client (web/, npm ci + esbuild) into web/dist, which the WCS
#                 serves at /; `make demo` and `make test` build it
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv sysdeps bench demo test test-fast lint dev serve clean web

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,agents,fast]' || $(PY) -m pip install -q -e '.[dev,fast]' \
		|| $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests drive (baresip, linphonec, SIPp, PostgreSQL's initdb, HAProxy)
# and the baselines the bench smoke tests run (kamailio, nginx, wrk, h2load); skipped
# without root/apt.
sysdeps:
	bash scripts/system-deps.sh --bench

bench: $(STAMP) sysdeps
	$(PY) -m bench --update-readme

venv: $(STAMP)

# The web client: npm ci from package-lock.json (no browser download: the tests use Debian's
# chromium), then web/build.mjs; without npm it says so and the WCS answers / with 503.
WEB_SOURCES = web/build.mjs $(wildcard web/src/*)
web:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory web/dist/index.html; \
	else echo "make web: npm not found (scripts/system-deps.sh installs it); web client not built" >&2; fi

web/node_modules/.package-lock.json: web/package-lock.json web/package.json
	cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SOURCES)
	cd web && npm run --silent build

demo: $(STAMP) web
	$(VENV)/bin/webconf demo

# Most tests wait on sockets and child processes, so they run in 3 workers (one module per
# worker: module-scoped servers stay shared); the ones that measure time or load (timeouts,
# floods, benches, process deaths) run alone afterwards, so a busy neighbour cannot skew them.
SERIAL_TESTS = tests/test_hostile_sip.py tests/test_digest_replay_live.py \
	tests/test_wcs_listener_limits.py tests/test_upload_revocation.py \
	tests/test_revocation_purge.py tests/test_supervisor.py tests/test_parent_death.py \
	tests/test_real_agents.py tests/test_bench_smoke_http.py tests/test_bench_smoke_sip.py \
	tests/test_bench_smoke_scale.py tests/test_bench_smoke_scaleout.py tests/test_multinode.py \
	tests/test_bench_smoke_present.py \
	tests/test_hostile_wss.py tests/test_web_cobblestone.py tests/test_web_browser.py

test: $(STAMP) sysdeps web
	$(PY) -m pytest -q -p no:cacheprovider -n 3 --dist loadfile \
		$(foreach f,$(SERIAL_TESTS),--ignore=$(f))
	$(PY) -m pytest -q -p no:cacheprovider $(SERIAL_TESTS)

# The inner loop: SQLite only, no slow tests, none of the timing/load files above.
test-fast: $(STAMP)
	WEBCONF_TEST_BACKENDS=sqlite $(PY) -m pytest -q -x -p no:cacheprovider -n 3 \
		--dist loadfile -m "not slow" $(foreach f,$(SERIAL_TESTS),--ignore=$(f))

# ruff over every Python file we ship or run; mypy --strict (pyproject) over the packages and bench/.
lint: $(STAMP)
	$(VENV)/bin/ruff check webconf conferencing focus clients bench tests
	$(VENV)/bin/mypy webconf conferencing focus clients bench

dev: $(STAMP)
	test -f .dev/webconf.toml || $(VENV)/bin/webconf init .dev

serve: dev
	$(VENV)/bin/webconf serve .dev

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache *.egg-info web/node_modules web/dist
