# syntax=docker/dockerfile:1
# The operator image: the wheel built in one stage, installed with its pinned dependencies into a
# virtual environment of a slim Python image in the next; no compiler, no build backend, no
# sources in the final image.
#
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/phala-network/cvm-prelaunch-operator:0.1.0 .
#
# tests/deploy/test_image.py runs hadolint on this file and performs the runtime stage's install
# command in a clean virtual environment.

# The interpreter requirements.lock was frozen with.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist /src

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/phala-network/cvm-prelaunch-operator
LABEL org.opencontainers.image.title="cvm-prelaunch-operator" \
      org.opencontainers.image.description="Keeps the pre-launch script of Phala Cloud CVMs in sync with a ConfigMap" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# The runtime dependencies exactly as requirements.lock pins them, each file checked against its
# hash, prebuilt wheels only (the image has no compiler); then the operator's wheel alone, and a
# check that nothing is missing. The wheel and the lock file are mounted, not copied, so they leave
# no layer behind. Bytecode is compiled here, because the root filesystem is read-only at run time.
# The user gets a passwd entry: kopf asks getpass.getuser() for its identity, which fails without.
RUN --mount=type=bind,from=build,source=/dist,target=/wheels \
    --mount=type=bind,source=requirements.lock,target=/src/requirements.lock \
    python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes --only-binary=:all: -r /src/requirements.lock \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index --no-deps /wheels/cvm_prelaunch_operator-*.whl \
 && python -m pip --python /opt/venv/bin/python check \
 && echo 'nonroot:x:65532:65532:cvm-prelaunch-operator:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group
# Only now: while installing, "python" has to be the base interpreter, which has pip.
ENV PATH=/opt/venv/bin:${PATH}
# Numeric, so that the kubelet can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["cvm-prelaunch-operator"]
