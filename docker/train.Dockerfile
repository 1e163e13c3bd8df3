# Training, evaluation and scoring: adds TensorFlow and Keras.
#   TRAIN_EXTRA=train  tensorflow-cpu (default)
#   TRAIN_EXTRA=gpu    TensorFlow with its CUDA libraries from PyPI; run it on a host with the NVIDIA driver and
#                      the NVIDIA container toolkit (the task asks for the GPU through device_requests)
ARG MLOPS_CORE=mlops-core:dev
FROM ${MLOPS_CORE}
ARG TRAIN_EXTRA=train

USER root
COPY docker/requirements/${TRAIN_EXTRA}.txt /tmp/requirements/train.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --quiet --no-deps --require-hashes -r /tmp/requirements/train.txt \
 && rm -rf /tmp/requirements
ENV KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
ARG MLOPS_UID=50000
USER ${MLOPS_UID}

COPY config /opt/mlops/config
COPY pipelines /opt/mlops/pipelines
LABEL org.opencontainers.image.title="mlops-train" io.mlops.task-kind="train" io.mlops.train-extra="${TRAIN_EXTRA}"
