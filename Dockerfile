# The code location's image: a gRPC code server for `-m etl_assets`, and the image every run and step pod of the
# K8sRunLauncher / k8s_job_executor runs (deploy/k8s/, docs/kubernetes.md). The webserver and daemon of the Helm
# release use it too, so every component runs the same pinned Dagster.
#
#   docker build -t registry.example.com/etl-assets:0.1.0 .
#
# Tested without a build (none can run where the tests run): etl_assets_tests/test_k8s_manifests.py checks what this
# file names and runs its CMD as a local process.

# --- build: the project and its pinned dependencies (pyproject.toml) into a virtual environment -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# the metadata first, so the dependency layer is rebuilt only when it changes
COPY pyproject.toml setup.py README.md ./
COPY etl_assets ./etl_assets
COPY etl_assets_demo ./etl_assets_demo
# the versions are pyproject.toml's pins (== for all but numpy); pip check fails the build on a conflicting set
RUN pip install . \
    && pip check

# --- runtime: the environment only, run by an unprivileged user ---------------------------------------------------
FROM python:3.11-slim

# 10001 is the runAsUser of deploy/k8s/ (a numeric USER lets Kubernetes verify runAsNonRoot)
RUN groupadd --gid 10001 etl \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /opt/dagster --shell /usr/sbin/nologin etl \
    && mkdir -p /opt/dagster/dagster_home /opt/dagster/scratch \
    && chown -R 10001:10001 /opt/dagster

COPY --from=build /opt/venv /opt/venv

# ETL_ENV=production: production settings; ETL_DEPLOYMENT=distributed: several pods share the deployment, so what
# belongs to one host (a DuckDB warehouse file) is refused. ETL_DATA_DIR is scratch space only (the scratch volume
# in deploy/k8s/); the lake and the landing zone are in S3 (ETL_LAKE_URL, ETL_LANDING_URL).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    ETL_ENV=production \
    ETL_DEPLOYMENT=distributed \
    ETL_DATA_DIR=/opt/dagster/scratch

USER 10001:10001
WORKDIR /opt/dagster

EXPOSE 4000

# No ENTRYPOINT: the chart and dagster-k8s start containers with `args` only (the code server's, a run's
# `dagster api execute_run ...`, a step's `dagster api execute_step`), which replace this CMD.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "etl_assets"]
