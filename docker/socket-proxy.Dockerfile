# The Docker socket proxy of the compose stack (docker/socket-proxy/proxy.py): the only way Airflow reaches the
# engine; it forwards what DockerOperator needs and refuses what would reach the host (privileged containers, host
# paths, host namespaces, capabilities, images outside an allow-list). Standard library only, so it starts from
# the plain Python base (as mlops-core does), not from a task image: no project code, no packages.
#   docker build -f docker/socket-proxy.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#       -t mlops-socket-proxy:dev .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

COPY docker/socket-proxy/proxy.py /opt/socket-proxy/proxy.py
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=2375 \
    DOCKER_SOCKET=/var/run/docker.sock \
    PROXY_ALLOWED_IMAGES=mlops-
# The engine's socket is root's (mode 660): the compose service runs it as root with every capability dropped,
# no new privileges and a read-only root file system; elsewhere run it as a user of the socket's group.
ARG MLOPS_UID=50000
USER ${MLOPS_UID}
EXPOSE 2375
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:2375/_ping', timeout=4)"]
ENTRYPOINT ["python3", "/opt/socket-proxy/proxy.py"]
CMD []
LABEL org.opencontainers.image.title="mlops-socket-proxy"
