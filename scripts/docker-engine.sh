#!/usr/bin/env bash
# Make sure a Docker engine answers. If none does and this machine can install one (Debian, root), install
# docker.io and start dockerd in the background; its log goes to $MLOPS_HOME/docker/dockerd.log.
# Exit 1 with a message saying what to do when no engine can be had.
set -euo pipefail
MLOPS_HOME=${MLOPS_HOME:-$(pwd)/var}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}

engine_answers() { [ -n "$DOCKER" ] && timeout 10 "$DOCKER" info >/dev/null 2>&1; }

# Compose for the stack (docker-compose.yaml): the v2 plugin, else Debian's docker-compose
ensure_compose() {
  if { [ -n "$DOCKER" ] && "$DOCKER" compose version >/dev/null 2>&1; } || command -v docker-compose >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "docker-engine: installing docker-compose from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1 \
      || echo "docker-engine: could not install docker-compose; the compose tests will say so" >&2
  fi
}

if engine_answers; then
  ensure_compose
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "docker-engine: installing docker.io from Debian (no engine answers)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q docker.io >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q docker.io >/dev/null; }
    DOCKER=/usr/bin/docker
  else
    echo "docker-engine: no Docker engine answers and none can be installed here." >&2
    echo "  Install Docker (https://docs.docker.com/engine/install/) and start it, or point DOCKER_HOST at one." >&2
    exit 1
  fi
fi
if [ -n "${DOCKER_HOST:-}" ]; then
  echo "docker-engine: DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST." >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "docker-engine: dockerd is installed but not running; start it (sudo systemctl start docker)." >&2
  exit 1
fi
# A dockerd that died without cleaning up (machine restart, kill -9) leaves its pid file, and a new dockerd
# refuses to start while it exists. Remove it only when no dockerd holds that pid.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || ! grep -qs -e dockerd -e containerd "/proc/$pid/comm"; then
      echo "docker-engine: removing stale $pidfile (pid ${pid:-none} is not running)" >&2
      rm -f "$pidfile"
    fi
  fi
done
mkdir -p "$MLOPS_HOME/docker"
echo "docker-engine: starting dockerd (log: $MLOPS_HOME/docker/dockerd.log)" >&2
nohup dockerd >"$MLOPS_HOME/docker/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  if engine_answers; then
    ensure_compose
    exit 0
  fi
  sleep 1
done
echo "docker-engine: dockerd did not answer within 60 s; see $MLOPS_HOME/docker/dockerd.log" >&2
tail -20 "$MLOPS_HOME/docker/dockerd.log" >&2 || true
exit 1
