# make demo | make test | make airflow | make airflow-stop | make db-start | make db-stop | make clean
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

.PHONY: demo test db-start db-stop db-status clean venv airflow airflow-stop airflow-status

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

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 tests

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
