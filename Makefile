# The README's commands. Each creates the virtual environment it needs on first use and
# reinstalls only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test stack-test bench images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev,airflow]"
	touch $(STAMP)

## demo: local MLflow server, training, promotion, serving and a first prediction (Ctrl-C stops all)
demo: $(STAMP)
	$(VENV)/bin/mlops demo $(DEMO_ARGS)

## test: the whole test suite against a real MLflow server (Postgres at 127.0.0.1:5432 if up)
test: $(STAMP)
	$(VENV)/bin/python -m pytest

## stack-test: docker-compose up of the whole stack on this host (local stand-ins for the
## images it cannot pull), the demo's prediction, Prometheus targets, then the teardown
stack-test: $(STAMP)
	$(VENV)/bin/python -m pytest tests/stack/test_stack_up.py

## bench: the benchmarks (prints tables, writes benchmarks/results/*.json)
bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.bench_logging

## images: the project's images, tagged by content (ARGS=--local-base where no registry is reachable)
IMAGES ?= serving autoserve mlflow airflow
images:
	bash services/autoserve/docker/build-images.sh $(ARGS) $(IMAGES)

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
