"""Operations: running the pieces rather than using them from a notebook.

The embedded demo (``demo``), the compose stack's one-shot job (``bootstrap``) and its
Airflow REST client (``airflow_api``), calls to the autoserve gateway (``gateway_client``),
a local MLflow server (``local_server``), local processes and ports (``processes``),
health checks (``doctor``), progress lines (``progress``) and teams' DAG projects
validated and published to Airflow (``projects``).
"""
