#!/usr/bin/env bash
# One-shot job that every stateful service waits on: the stack does not start while a secret
# still holds an env.dev.example placeholder (change-me), is empty, or is shared by two uses
# (a leaked webhook key must not also be Airflow's JWT secret). One line on stderr, exit 1.
set -u
names=(POSTGRES_PASSWORD MLFLOW_DB_PASSWORD AIRFLOW_DB_PASSWORD APP_DB_PASSWORD MINIO_ROOT_PASSWORD MLFLOW_WEBHOOK_ENCRYPTION_KEY AUTOSERVE_WEBHOOK_SECRET
       AIRFLOW_ADMIN_PASSWORD AIRFLOW_JWT_SECRET AIRFLOW_API_SECRET_KEY AIRFLOW_FERNET_KEY GRAFANA_ADMIN_PASSWORD)
problems=()
for name in "${names[@]}"; do
    value="${!name:-}"
    if [ -z "$value" ]; then
        problems+=("$name is empty")
        continue
    fi
    # A base64 placeholder (the example's Fernet key) hides "change-me" until decoded.
    decoded="$(printf '%s' "$value" | tr '_-' '/+' | base64 -d 2>/dev/null | tr -d '\0' || true)"
    case "$value $decoded" in
        *change-me*) problems+=("$name still holds a change-me placeholder") ;;
    esac
done
for ((i = 0; i < ${#names[@]}; i++)); do
    for ((j = i + 1; j < ${#names[@]}; j++)); do
        a="${!names[i]:-}" b="${!names[j]:-}"
        if [ -n "$a" ] && [ "$a" = "$b" ]; then
            problems+=("${names[i]} and ${names[j]} hold the same value (use one secret per purpose)")
        fi
    done
done
for name in AIRFLOW_FERNET_KEY MLFLOW_WEBHOOK_ENCRYPTION_KEY; do
    key="${!name:-}"
    if [ -n "$key" ] && [ "$(printf '%s' "$key" | tr '_-' '/+' | base64 -d 2>/dev/null | wc -c)" -ne 32 ]; then
        problems+=("$name is not a Fernet key (32 url-safe base64 bytes)")
    fi
done
if [ ${#problems[@]} -gt 0 ]; then
    joined="$(printf '%s; ' "${problems[@]}")"
    echo "refusing to start the stack: ${joined%; } (edit .env)" >&2
    exit 1
fi
echo "secrets checked: ${#names[@]} set, distinct, no placeholder"
