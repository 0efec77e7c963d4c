# make demo | make test | make test-fast | make airflow | make airflow-stop | make db-start | make db-stop | make clean
# The virtualenv is created on first use (and refreshed when requirements.txt changes).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export PYTHONPATH := $(CURDIR)/plugins
export AIRFLOW_HOME := $(CURDIR)/.state/airflow
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins

.PHONY: demo test test-fast db-start db-stop db-status clean venv airflow airflow-stop airflow-status

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

demo: $(STAMP)
	@if [ -z "$$CONSOLIDATION_DB_URL" ]; then $(PY) -m consolidation db start; \
	else echo "using CONSOLIDATION_DB_URL (embedded server not started)"; fi
	$(PY) -m consolidation demo

# make test: every tier (unit, engine, dag, runtime: see pytest.ini); CI runs it (.ci/run).
# make test-fast: all but the runtime tier (the tests that start Airflow processes).
# The tiers but runtime run in WORKERS processes (pytest-xdist, one module per worker at a
# time; the stage templates are built once per run and shared, see tests/conftest.py); the
# runtime tier runs after them in RUNTIME_WORKERS processes of its own (its tests wait on
# Airflow's schedulers about half the time: the CPUs were half idle with one). WORKERS=1
# RUNTIME_WORKERS=1 runs everything in one process. (WORKERS=3 was slower here: 298 s
# against 254 s for WORKERS=2.)
# Both print the slowest tests and the run's wall time with the machine's load average.
# Extra pytest arguments: make test-fast PYTEST_ARGS="--lf" (the cache plugin is on).
PYTEST_ARGS ?=
DURATIONS ?= 15
WORKERS ?= 2
# (1 where CONSOLIDATION_SKIP_RUNTIME=1 skips that tier: starting workers only to skip cost 10 s)
RUNTIME_WORKERS ?= $(if $(filter 1,$(CONSOLIDATION_SKIP_RUNTIME)),1,2)
xdist = $(if $(filter-out 0 1,$(1)),-n $(1) --dist loadfile,)
XDIST = $(call xdist,$(WORKERS))
RUNTIME_XDIST = $(if $(call xdist,$(RUNTIME_WORKERS)),$(call xdist,$(RUNTIME_WORKERS)) --no-loadscope-reorder,)
define run_pytest
	@start=$$(date +%s); load=$$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null); rc=0; \
	$(PY) -m pytest -q --durations=$(DURATIONS) $(XDIST) -m "not runtime" $(PYTEST_ARGS) tests || rc=$$?; \
	echo "== make $@: tiers unit, engine, dag: $$(( $$(date +%s) - start )) s wall ($(or $(XDIST),1 process))"; \
	if [ "$(1)" = "all" ]; then \
	  rstart=$$(date +%s); \
	  $(PY) -m pytest -q --durations=$(DURATIONS) $(RUNTIME_XDIST) -m runtime $(PYTEST_ARGS) tests || { r=$$?; [ $$r = 5 ] || rc=$$r; }; \
	  echo "== make $@: tier runtime: $$(( $$(date +%s) - rstart )) s wall ($(or $(RUNTIME_XDIST),1 process))"; \
	fi; \
	echo "== make $@: $$(( $$(date +%s) - start )) s wall; load average before: $$load, after: $$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"; \
	exit $$rc
endef

test: $(STAMP)
	$(call run_pytest,all)

test-fast: $(STAMP)
	$(call run_pytest,fast)

# Airflow with its UI on localhost:8080 (LocalExecutor, metadata in the embedded PostgreSQL)
airflow: $(STAMP)
	$(PY) -m consolidation airflow-local start

airflow-stop: $(STAMP)
	$(PY) -m consolidation airflow-local stop

airflow-status: $(STAMP)
	$(PY) -m consolidation airflow-local status

db-start: $(STAMP)
	$(PY) -m consolidation db start

db-stop: $(STAMP)
	$(PY) -m consolidation db stop

db-status: $(STAMP)
	$(PY) -m consolidation db status

clean:
	@if [ -x $(PY) ]; then $(PY) -m consolidation db stop; fi
	rm -rf .state
