#!/usr/bin/env bash
# airflow-init (one-shot): migrate Airflow's metadata database and give the admin user the
# password from .env. Airflow 3's simple auth manager reads passwords from a JSON file
# (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE) on a volume the api-server shares.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then
    # Compose runs this job as root once, so that volumes an older stack wrote as root are
    # handed to the airflow user; everything else runs as airflow.
    chown -R airflow:airflow /opt/airflow/logs /opt/airflow/auth
    exec setpriv --reuid=airflow --regid=airflow --init-groups bash "$0" "$@"
fi
python - <<'PY'
import json
import os
from pathlib import Path

path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}))
path.chmod(0o600)
print(f"admin password file written for user {os.environ['AIRFLOW_ADMIN_USER']}")
PY
airflow db migrate
