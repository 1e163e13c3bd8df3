# Light steps: ingest (Great Expectations), gate, register, promote.
#   docker build -f docker/base.Dockerfile --build-arg MLOPS_CORE=mlops-core:dev -t mlops-base:dev .
ARG MLOPS_CORE=mlops-core:dev
FROM ${MLOPS_CORE}

COPY config /opt/mlops/config
COPY pipelines /opt/mlops/pipelines
LABEL org.opencontainers.image.title="mlops-base" io.mlops.task-kind="base"
