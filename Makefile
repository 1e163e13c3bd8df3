# Two commands do all the set-up on a fresh machine (Linux, Python 3.11, Java 17):
#   make run    set up, then replay 2013 through the whole lifecycle on embedded defaults (mlops demo)
#   make test   set up, then run every test tier
SHELL := /bin/bash
PYTHON ?= python3.11
UV ?= $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := $(CURDIR)/.venv
export MLOPS_HOME ?= $(CURDIR)/var
export UV_PYTHON ?= $(PYTHON)
export MLFLOW_UV_AUTO_DETECT := false
# everything but the GPU build of TensorFlow (the `gpu` extra is for the GPU train image); mlflow-auth for the
# tests that start MLflow's basic-auth server (tests/test_mlflow_auth.py)
EXTRAS := --extra spark --extra train --extra airflow --extra serve --extra report --extra monitor --extra mlflow-auth

.PHONY: setup check-java run demo test test-fast lint format bench bench-containers images requirements stack-env stack ui airflow clean

# uv from PyPI into .tools when none is installed (no curl|sh installer: only package registries are reachable)
$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv>=0.5"

# --compile-bytecode: every Python process here (an Airflow task's subprocess, a load check, a test's server)
# would otherwise compile scikit-learn, MLflow, pandas... from source on import, seconds each time, and never keep
# the result where PYTHONDONTWRITEBYTECODE is set (it is on many CI machines and in our images)
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode $(EXTRAS)
	@touch $@

# our own packages too (cheap; a stale .pyc is detected by its source's mtime and ignored)
setup: $(VENV)/.synced check-java
	@$(VENV)/bin/python -m compileall -q -j 0 pipelines plugins mlops_cli dags tests >/dev/null

check-java:
	@command -v java >/dev/null || { echo "Java 17 is needed for Spark: apt-get install openjdk-17-jre-headless (or set JAVA_HOME)"; exit 1; }

run: setup
	$(VENV)/bin/mlops demo $(DEMO_ARGS)

demo: run

# two pytest-xdist workers: a demo replay keeps about one core busy, so two share a 2-core machine well. Tests that
# share the reference demo run or the Docker images stay in one worker, a module's tests together
# (tests/conftest.py); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST_WORKERS := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

test: setup
	bash scripts/ensure-chromium.sh
	$(VENV)/bin/pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: setup
	bash scripts/ensure-chromium.sh
	$(VENV)/bin/pytest $(PYTEST_WORKERS) -m "not e2e" $(PYTEST_ARGS)

# Task images (docker/): mlops-core, then mlops-base, mlops-spark, mlops-train (KINDS, MLOPS_IMAGE_TAG, BASE_IMAGE,
# TRAIN_EXTRA=gpu). Starts a Docker engine if none answers and one can be installed; builds offline if needed.
images:
	bash scripts/build-images.sh

# docker/requirements/*.txt: each image's part of uv.lock, with hashes (a test checks they are current)
requirements: | $(UV)
	bash scripts/export-requirements.sh

# The full stack (docker-compose.yaml): secrets into .env once, the images, then `docker compose up -d`
stack-env:
	bash scripts/stack-env.sh

stack: stack-env
	KINDS="base spark train airflow mlflow socket-proxy" bash scripts/build-images.sh
	docker compose up -d || docker-compose up -d

bench-containers: setup
	$(VENV)/bin/python bench/containers.py $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(VENV)/bin/python bench/lifecycle.py $(BENCH_ARGS)

# Airflow UI on :8080 and MLflow UI on :5000 over the demo state (Ctrl-C stops both; the admin password is in
# var/airflow/simple_auth_manager_passwords.json.generated)
ui airflow: setup
	$(VENV)/bin/mlops ui

clean:
	rm -rf $(MLOPS_HOME) .pytest_cache .ruff_cache
