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
    HOME=/tmp \
    PATH=/opt/venv/bin:${PATH}
# Only prebuilt wheels (--only-binary): the image has no compiler, so nothing may need building.
# The lock file constrains every dependency to the version the tests ran with. The wheel and the
# lock file are mounted, not copied, so they leave no layer behind. Bytecode is compiled here,
# because the root filesystem is read-only at run time.
RUN --mount=type=bind,from=build,source=/dist,target=/wheels \
    --mount=type=bind,source=requirements.lock,target=/src/requirements.lock \
    python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --no-cache-dir --only-binary=:all: --constraint /src/requirements.lock /wheels/cvm_prelaunch_operator-*.whl
# A numeric user, so that runAsNonRoot can be verified without a passwd entry.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["cvm-prelaunch-operator"]
