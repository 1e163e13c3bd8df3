# The REST scoring service (`mlops serve`): the train image (scikit-learn and Keras champions load alike) plus
# uvloop, httptools and the Prometheus client, from the lock (docker/requirements/serve.txt).
#   docker run -p 8000:8000 -e MLOPS_API_KEYS=... -e MLOPS_LAKE_URI=... -e MLFLOW_TRACKING_URI=... \
#       mlops-serve:dev --usecase flight_delay --host 0.0.0.0
ARG MLOPS_TRAIN=mlops-train:dev
FROM ${MLOPS_TRAIN}

USER root
COPY docker/requirements/serve.txt /tmp/requirements/serve.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --quiet --no-deps --require-hashes -r /tmp/requirements/serve.txt \
 && rm -rf /tmp/requirements
ARG MLOPS_UID=50000
USER ${MLOPS_UID}
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "pipelines", "serve"]
CMD ["--usecase", "flight_delay", "--host", "0.0.0.0", "--port", "8000"]
LABEL org.opencontainers.image.title="mlops-serve" io.mlops.task-kind="serve"
