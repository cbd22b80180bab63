#!/usr/bin/env bash
# Build the images the Docker runtime needs, reusing what this machine already has.
#   build-images.sh [--local-base]   prints the serving image tag on its last line
# --local-base: build the Python base from this machine's apt mirror (no registry needed;
# what CI does). Without it the Dockerfiles use the public python:3.11-slim-bookworm.
# Tags carry a hash of the Dockerfile: a changed Dockerfile gets a new tag, an existing
# image is never overwritten.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base_args=()
if [ "${1:-}" = "--local-base" ]; then
    base=mlops-toolkit/python-base:bookworm
    bash "$here/build-base-image.sh" "$base" >&2
    base_args=(--build-arg "BASE_IMAGE=$base")
fi
hash=$(cat "$here/../Dockerfile.serving" <(printf '%s' "${base_args[*]:-public}") | sha256sum | cut -c1-12)
image="mlops-toolkit/serving:$hash"
if ! docker image inspect "$image" >/dev/null 2>&1; then
    docker build --network host "${base_args[@]}" -t "$image" -f "$here/../Dockerfile.serving" "$here/.." >&2
fi
echo "$image"
