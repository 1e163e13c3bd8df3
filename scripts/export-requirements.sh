#!/usr/bin/env bash
# Write docker/requirements/<image>.txt from uv.lock: core (every image), spark, train, gpu, airflow, mlflow, serve.
# Each file lists the core plus that image's extra, pinned with hashes, so images install exactly the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .tools/bin/uv)}
OUT=${1:-docker/requirements}
mkdir -p "$OUT"
for part in core spark train gpu airflow mlflow serve; do
  case $part in
    core) extra=() ;;
    mlflow) extra=(--extra postgres --extra mlflow-auth) ;;
    train | gpu) extra=(--extra "$part" --extra report --extra monitor) ;;  # it also runs the report and monitor steps
    *) extra=(--extra "$part") ;;
  esac
  "$UV" export --quiet --frozen --no-dev --no-emit-project --no-header --format requirements-txt \
    "${extra[@]}" -o "$OUT/$part.txt"
done
