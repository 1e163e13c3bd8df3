#!/usr/bin/env bash
# Build the task images from the lock: mlops-core (Python + core dependencies), then one image per task kind
# (base, spark, train; airflow, mlflow and socket-proxy for the compose stack with KINDS="... airflow mlflow
# socket-proxy"; serve, after train, for `mlops serve`).
#
#   MLOPS_IMAGE_TAG  image tag (default dev)
#   KINDS            which images (default "base spark train")
#   BASE_IMAGE       the Python 3.11 base; by default python:3.11-slim-bookworm when a registry answers, else an
#                    offline debootstrap base (scripts/offline-base-image.sh)
#   TRAIN_EXTRA      train (tensorflow-cpu, default) or gpu (TensorFlow with CUDA libraries)
# Build logs: $MLOPS_HOME/docker/build-<image>.log
set -euo pipefail
cd "$(dirname "$0")/.."
export MLOPS_HOME=${MLOPS_HOME:-$(pwd)/var}
TAG=${MLOPS_IMAGE_TAG:-dev}
KINDS=${KINDS:-base spark train}
TRAIN_EXTRA=${TRAIN_EXTRA:-train}
LOGS=$MLOPS_HOME/docker
mkdir -p "$LOGS"

bash scripts/docker-engine.sh

# Debian's client drives BuildKit (secrets); a newer client without buildx cannot. Chosen after the engine
# script, which installs Debian's docker.io on a machine that has none (a newer client found before it is not
# the one to build with)
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
export DOCKER DOCKER_BUILDKIT=1

if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=python:3.11-slim-bookworm
  if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
     && ! timeout 120 "$DOCKER" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "build-images: no registry answers; using an offline Debian base"
    BASE_IMAGE=mlops-python:3.11-bookworm
    bash scripts/offline-base-image.sh "$BASE_IMAGE"
  fi
fi

SECRET=()
for ca in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -n "$ca" ] && [ -s "$ca" ]; then SECRET=(--secret "id=ca,src=$ca"); break; fi
done

build() {  # build IMAGE DOCKERFILE [build args...]
  local image=$1 file=$2 start=$SECONDS
  shift 2
  if ! "$DOCKER" build --progress=plain "${SECRET[@]}" -f "$file" -t "$image" "$@" . >"$LOGS/build-${image%%:*}.log" 2>&1; then
    echo "build-images: building $image failed; the end of $LOGS/build-${image%%:*}.log:" >&2
    tail -30 "$LOGS/build-${image%%:*}.log" >&2
    exit 1
  fi
  local size
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
  printf 'build-images: %-22s %6d MB  (%ds)\n' "$image" $((size / 1000000)) $((SECONDS - start))
}

build "mlops-core:$TAG" docker/core.Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE"
for kind in $KINDS; do
  args=(--build-arg "MLOPS_CORE=mlops-core:$TAG")
  if [ "$kind" = train ]; then args+=(--build-arg "TRAIN_EXTRA=$TRAIN_EXTRA"); fi
  if [ "$kind" = serve ]; then args+=(--build-arg "MLOPS_TRAIN=mlops-train:$TAG"); fi  # KINDS lists train first
  if [ "$kind" = socket-proxy ]; then args=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi  # standard library only
  build "mlops-$kind:$TAG" "docker/$kind.Dockerfile" "${args[@]}"
done
