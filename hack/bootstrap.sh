#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine, idempotently and fast when warm:
# the Python venv (.venv: exactly requirements-dev.lock and this clone's two projects), the pinned
# npm tools (anvil, solc-js, the Phala CLI) and the kube-apiserver/kubectl build (cached outside the
# clone, keyed by version).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

py_stamp="$(stamp_of pyproject.toml localenv/pyproject.toml requirements-dev.in requirements-dev.lock)"
if [[ ! -x .venv/bin/python || "$(cat .venv/.stamp 2>/dev/null)" != "$py_stamp" ]]; then
  echo ">> python environment (.venv, from requirements-dev.lock)"
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  # Exactly the lock, plus the two projects of this clone (editable; their build backend is pinned by
  # the lock too): packages that left the lock are removed, unchanged ones are not touched, so tests
  # already running from .venv keep working.
  bash hack/uv.sh pip sync --quiet --python .venv/bin/python --build-constraints requirements-dev.lock \
    --reinstall-package cvm-prelaunch-operator --reinstall-package cvm-prelaunch-localenv \
    requirements-dev.lock requirements-dev.in
  if ! bash hack/uv.sh pip check --quiet --python .venv/bin/python; then
    echo "requirements-dev.lock does not satisfy pyproject.toml: run hack/lock.sh" >&2
    exit 1
  fi
  echo "$py_stamp" > .venv/.stamp
fi

npm_stamp="$(stamp_of package-lock.json)"
if [[ ! -d node_modules || "$(cat node_modules/.stamp 2>/dev/null)" != "$npm_stamp" ]]; then
  echo ">> npm tools (npm ci --ignore-scripts)"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  echo "$npm_stamp" > node_modules/.stamp
fi

if ! bin_dir="$(K8S_QUIET=1 bash hack/build-k8s.sh --check 2>/dev/null)"; then
  echo ">> building kube-apiserver and kubectl from k8s.io/kubernetes (cold: ~6 min, then cached)"
  bin_dir="$(bash hack/build-k8s.sh)"
fi
echo ">> promtool (deploy/monitoring tests): $(bash hack/build-promtool.sh)"  # cold: ~2 min, then cached
echo ">> helm (deploy/helm tests, hack/release.sh): $(bash hack/build-helm.sh)"  # cold: ~2 min, then cached
echo ">> ready: kube binaries in $bin_dir"
