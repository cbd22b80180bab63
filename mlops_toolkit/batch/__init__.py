"""Scheduled batch: what the Airflow DAGs run (``dags/`` only calls these).

* ``jobs``: one function per DAG task (load, train and gate, score, monitor);
* ``appdb``: the application database (SQLAlchemy Core, versioned migrations);
* ``training``: the candidates and the champion/challenger gate, shared with the demo;
* ``drift``: KS tests per feature, logged to MLflow and pushed to a Pushgateway.
"""
