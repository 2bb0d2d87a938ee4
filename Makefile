# Two commands a user needs: `make run` (Airflow with the DAGs) and `make test` (the whole suite).
# Both build the virtual environment from the committed lock first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lint run demo test test-fast bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	# Compiled bytecode at install: where Python may not write it (PYTHONDONTWRITEBYTECODE, a
	# read-only image) every process would compile Airflow again; measured 4.4 CPU-s -> 1.9
	# CPU-s to import what a task imports, paid by every Airflow task (about 25 s more install).
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	# The editable build leaves plugins/vlmdata.egg-info, on sys.path beside the package: Airflow
	# would find the UI plugin's entry point twice ("Plugin 'vlmdata' already registered").
	rm -rf plugins/vlmdata.egg-info
	touch $(STAMP)

run: $(STAMP)  ## Airflow (API server, scheduler, DAG processor) on http://localhost:8080, storage in ./data
	$(BIN)/python -m vlmdata.localairflow

demo: $(STAMP)  ## tiny replicas of every source on loopback, every DAG run in Airflow (http://localhost:8081)
	$(BIN)/python -m vlmdata.demo

test: $(STAMP) lint  ## lint, then the whole suite, end-to-end Airflow runs included
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP) lint  ## lint, then everything but the end-to-end Airflow runs
	$(BIN)/python -m pytest -q -ra -m "not e2e"

lint: $(STAMP)  ## ruff with the rules of pyproject.toml (a few seconds)
	$(BIN)/ruff check plugins tests bench dags

bench: $(STAMP)
	$(BIN)/python -m bench

lock:  ## re-resolve requirements.lock after changing pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .airflow .demo
