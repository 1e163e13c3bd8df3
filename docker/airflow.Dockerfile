# Airflow for the compose stack (api-server, scheduler, dag-processor, triggerer): Airflow and the providers our
# operators use, from the same lock, with the DAGs, plugins, pipelines, config and the `mlops` command (mlops_cli:
# `mlops land` in the scheduler) of this tree. Tasks run in their own containers (task_runtime docker), so this
# image carries neither Spark nor TensorFlow.
ARG MLOPS_CORE=mlops-core:dev
FROM ${MLOPS_CORE}

USER root
COPY docker/requirements/airflow.txt /tmp/requirements/airflow.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --quiet --no-deps --require-hashes -r /tmp/requirements/airflow.txt \
 && rm -rf /tmp/requirements \
 && mkdir -p /opt/airflow/logs && chown -R 50000:0 /opt/airflow && chmod -R g+rwX /opt/airflow \
 && printf '#!/bin/sh\nexec python -m mlops_cli "$@"\n' > /opt/venv/bin/mlops && chmod 755 /opt/venv/bin/mlops
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mlops/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/mlops/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/opt/mlops:/opt/mlops/plugins
ARG MLOPS_UID=50000
USER ${MLOPS_UID}

COPY config /opt/mlops/config
COPY pipelines /opt/mlops/pipelines
COPY plugins /opt/mlops/plugins
COPY mlops_cli /opt/mlops/mlops_cli
COPY dags /opt/mlops/dags
ENTRYPOINT ["airflow"]
CMD ["version"]
LABEL org.opencontainers.image.title="mlops-airflow" io.mlops.task-kind="airflow"
