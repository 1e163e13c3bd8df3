# The MLflow tracking server for the compose stack: MLflow from the same lock (the core), PostgreSQL driver for
# the backend store, boto3 for artifacts in MinIO/S3 (proxied: clients need no S3 credentials), Flask-WTF for
# its basic-auth app, with the auth config and the users' set-up (docker/mlflow; docs/security.md).
ARG MLOPS_CORE=mlops-core:dev
FROM ${MLOPS_CORE}

USER root
COPY docker/requirements/mlflow.txt /tmp/requirements/mlflow.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --quiet --no-deps --require-hashes -r /tmp/requirements/mlflow.txt \
 && rm -rf /tmp/requirements
ARG MLOPS_UID=50000
# the auth app's user store (the compose volume mlflow-auth is mounted here and keeps this owner)
RUN mkdir -p /var/lib/mlops/mlflow-auth && chown ${MLOPS_UID}:0 /var/lib/mlops/mlflow-auth
COPY docker/mlflow/basic_auth.ini /opt/mlops/mlflow-auth.ini
COPY docker/mlflow/mlflow_users.py /opt/mlops/mlflow_users.py
USER ${MLOPS_UID}
EXPOSE 5000
# no MLflow jobs are used: without this `mlflow server` spawns job-runner processes (huey, ~180 MB each)
ENV MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
LABEL org.opencontainers.image.title="mlops-mlflow"
