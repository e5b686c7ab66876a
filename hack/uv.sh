#!/usr/bin/env bash
# Runs the uv that hack/lock.sh and hack/bootstrap.sh use (`hack/uv.sh pip compile ...`), installing
# it first if needed: the version pinned in requirements-dev.lock, in the build cache, outside .venv,
# so that locking never disturbs a venv that tests are running from.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# Before the first lock exists, or if the lock lost its pin, this version bootstraps it.
UV_FALLBACK_VERSION=0.13.9
UV_VERSION="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$root/requirements-dev.lock" 2>/dev/null | head -n1 || true)"
UV_VERSION="${UV_VERSION:-$UV_FALLBACK_VERSION}"
CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
OUT="$CACHE_ROOT/uv-$UV_VERSION"
PYTHON="${PYTHON:-python3}"

if [[ "$("$OUT/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
  # The uv wheel is a static binary: a --target install is all it needs. Built beside its final
  # place and renamed, so a concurrent run never sees half an install.
  mkdir -p "$CACHE_ROOT"
  tmp="$(mktemp -d "$CACHE_ROOT/.uv-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$tmp" "uv==$UV_VERSION" >&2
  rm -rf "$OUT"
  mv "$tmp" "$OUT" 2>/dev/null || true  # a concurrent run may have won the rename: its copy is equal
fi

# uv reads neither pip.conf nor PIP_* variables: take the index from pip's environment if one is
# set, and trust the system's certificate store, as pip is told to here.
if [[ -n "${PIP_INDEX_URL:-}" && -z "${UV_DEFAULT_INDEX:-}${UV_INDEX_URL:-}" ]]; then
  export UV_DEFAULT_INDEX="$PIP_INDEX_URL"
fi
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-1}"
exec "$OUT/bin/uv" "$@"
