"""Airflow for DAG tests: a throwaway AIRFLOW_HOME, set before anything imports airflow.

``dag.test()`` runs a DAG in-process; it needs Airflow's metadata DB migrated once per
session (~7 s) and does not raise on task failure, so tests assert the DagRun state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import IN_CI

DAGS = Path(__file__).resolve().parents[2] / "dags"
_HOME = tempfile.mkdtemp(prefix="airflow-home-")
os.environ.update({
    "AIRFLOW_HOME": _HOME,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__PARALLELISM": "2",
})


@pytest.fixture(scope="session")
def airflow_db() -> str:
    try:
        import airflow  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but apache-airflow is not installed (pip install '.[airflow]')")
        pytest.skip("apache-airflow is not installed (pip install '.[airflow]')")
    result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                            env=os.environ, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return _HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))
