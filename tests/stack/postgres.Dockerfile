# A stand-in for the official postgres image when no registry answers (tests of the compose stack only). It
# keeps the official image's contract: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, scripts in
# /docker-entrypoint-initdb.d run on first start, data in /var/lib/postgresql/data.
ARG BASE_IMAGE=mlops-python:3.11-bookworm
FROM ${BASE_IMAGE}
USER root
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY tests/stack/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
