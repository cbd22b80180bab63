"""Benchmarks: scripts that print a table, write JSON and compare against a same-run baseline."""

import os

# MLflow's INFO lines ("Waiting up to 300 seconds...") would drown the tables.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
