#!/usr/bin/env bash
# Build the project's images, reusing what this machine already has.
#   build-images.sh [--local-base] [serving|autoserve|mlflow|airflow|offline-* ...]   (default: serving)
# offline-postgres, offline-prometheus, offline-pushgateway, offline-blackbox, offline-s3:
# stand-ins from Debian packages (and moto) for the public images a host without Docker Hub
# cannot pull; services/offline/docker-compose.offline.yml swaps them in.
# Prints one image tag per line, in the order asked (the serving image's on the last line
# when it is the only one). --local-base: build the Python base from this machine's apt
# mirror (no registry needed; what CI does). Without it the Dockerfiles use the public
# python:3.11-slim-bookworm.
# Tags carry a hash of the Dockerfile and of the project files the image copies: a change
# gets a new tag, an existing image is never overwritten.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
base_args=()
if [ "${1:-}" = "--local-base" ]; then
    shift
    base=mlops-toolkit/python-base:bookworm
    bash "$here/build-base-image.sh" "$base" >&2
    base_args=(--build-arg "BASE_IMAGE=$base")
fi
[ $# -gt 0 ] || set -- serving

content_of() {  # the files an image COPYs from the repository, in a stable order
    [ $# -gt 0 ] || return 0
    (cd "$root" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat)
}
project=(pyproject.toml README.md mlops_toolkit services/autoserve/mlops_autoserve)

for name in "$@"; do
    target=()
    case "$name" in
        serving)   dockerfile=services/autoserve/Dockerfile.serving; context=services/autoserve; copied=() ;;
        autoserve) dockerfile=services/autoserve/Dockerfile;         context=.; copied=("${project[@]}") ;;
        mlflow)    dockerfile=services/mlflow/Dockerfile;            context=services/mlflow; copied=() ;;
        airflow)   dockerfile=services/airflow/Dockerfile;           context=.; copied=("${project[@]}" dags) ;;
        offline-postgres) dockerfile=services/offline/Dockerfile.postgres; context=services/offline; copied=(services/offline/postgres-entrypoint.sh) ;;
        offline-s3)       dockerfile=services/offline/Dockerfile.s3;       context=services/offline; copied=(services/offline/make-buckets.py) ;;
        offline-prometheus|offline-pushgateway|offline-blackbox)
                          dockerfile=services/offline/Dockerfile.prometheus; context=services/offline; copied=()
                          target=(--target "${name#offline-}") ;;
        *) echo "unknown image '$name' (known: serving autoserve mlflow airflow offline-postgres offline-prometheus offline-pushgateway offline-blackbox offline-s3)" >&2; exit 2 ;;
    esac
    hash=$({ cat "$root/$dockerfile"; printf '%s' "${base_args[*]:-public}" "${target[*]:-}"; content_of "${copied[@]}"; } \
           | sha256sum | cut -c1-12)
    image="mlops-toolkit/$name:$hash"
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        docker build --network host "${base_args[@]}" "${target[@]}" -t "$image" -f "$root/$dockerfile" "$root/$context" >&2
    fi
    echo "$image"
done
