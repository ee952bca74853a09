# retrain-controller image: a builder stage makes a virtualenv with the package and its dependencies; the final
# stage copies only that virtualenv onto the same slim base (no compilers, no pip cache, no sources).
# Base images are pinned by tag. For reproducible production builds pin the digest too, e.g.
#   FROM python:3.11.11-slim-bookworm@sha256:<digest>
# (take the digest from `docker buildx imagetools inspect python:3.11.11-slim-bookworm`; bump both together).
# Both stages must use the same base: the virtualenv's python is a symlink to the base's interpreter.

# ---- builder --------------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Only what the wheel is built from (see .dockerignore): the metadata, then the package.
COPY pyproject.toml README.md ./
COPY controller ./controller

# Every dependency ships as a binary wheel for CPython 3.11 on linux/amd64 and arm64, so no compiler is needed
# here either. Build the project's wheel, then install it (not editable) with its dependencies into the venv.
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl \
    && /opt/venv/bin/retrain-controller --help >/dev/null

# ---- runtime --------------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The uid/gid k8s/deployment.yaml runs as (runAsUser 10001); no home, no login shell.
RUN groupadd --system --gid 10001 retrain \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin retrain \
    && mkdir -p /etc/retrain-controller /var/lib/retrain-controller \
    && chown 10001:10001 /var/lib/retrain-controller

COPY --from=builder /opt/venv /opt/venv

# The store lives here (a volume in Kubernetes: the PVC); the root filesystem can be read-only.
WORKDIR /var/lib/retrain-controller
USER 10001:10001

EXPOSE 8080

# Docker only; Kubernetes uses the Deployment's liveness (/healthz) and readiness (/readyz) probes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

ENTRYPOINT ["retrain-controller"]
CMD ["serve", "--config", "/etc/retrain-controller/config.yaml"]
