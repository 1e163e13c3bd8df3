# The features step: adds a Java runtime and PySpark (local Spark inside the container, or a cluster through
# the profile's spark_master).
ARG MLOPS_CORE=mlops-core:dev
FROM ${MLOPS_CORE}

USER root
# /usr/share/man/man1 must exist for the JRE's post-install script on slim images
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64

COPY docker/requirements/spark.txt /tmp/requirements/spark.txt
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --quiet --no-deps --require-hashes -r /tmp/requirements/spark.txt \
 && rm -rf /tmp/requirements
ARG MLOPS_UID=50000
USER ${MLOPS_UID}

COPY config /opt/mlops/config
COPY pipelines /opt/mlops/pipelines
LABEL org.opencontainers.image.title="mlops-spark" io.mlops.task-kind="spark"
