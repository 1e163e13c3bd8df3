#!/usr/bin/env bash
# Build a Python 3.11 base image without any image registry: debootstrap a minimal Debian bookworm (its
# python3 is 3.11) and `docker import` it. Used by build-images.sh when no registry answers.
# Usage: scripts/offline-base-image.sh IMAGE_NAME
set -euo pipefail
IMAGE=${1:?usage: offline-base-image.sh IMAGE_NAME}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "offline-base-image: $IMAGE exists"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  else
    echo "offline-base-image: debootstrap is missing (apt-get install debootstrap) and no registry answers;" >&2
    echo "  or set BASE_IMAGE to a Python 3.11 image you have (docker images)." >&2
    exit 1
  fi
fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
echo "offline-base-image: debootstrap bookworm into $ROOT (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
tar -C "$ROOT" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --message "debootstrap bookworm minbase + python3 (offline base for mlops images)" - "$IMAGE" >/dev/null
echo "offline-base-image: built $IMAGE"
