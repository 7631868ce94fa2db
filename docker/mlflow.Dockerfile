# syntax=docker/dockerfile:1
# MLflow tracking server for k8s/base/mlflow.yaml: the official image, pinned to the MLflow version the project
# uses (pyproject: mlflow>=3.17,<3.19), plus the PostgreSQL driver and the basic-auth app's Flask-WTF it lacks, run
# as a non-root user.
# Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t REGISTRY/vigos-mlflow:3.17.2 .  (or `make images`)
FROM ghcr.io/mlflow/mlflow:v3.17.2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY docker/requirements-mlflow.txt /tmp/requirements-mlflow.txt
RUN pip install --no-cache-dir --requirement /tmp/requirements-mlflow.txt \
    && rm /tmp/requirements-mlflow.txt \
    && python -c "import mlflow, psycopg2, flask_wtf"

# Numeric USER, so `runAsNonRoot` can verify it; HOME is writable for anything MLflow caches there.
RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash mlflow
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
