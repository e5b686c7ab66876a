#!/usr/bin/env bash
# Static security scan of the rendered install manifests with checkov.
#
# checkov pulls in a large dependency tree that conflicts with nothing we ship but is far heavier than
# the rest of the test tooling, so it lives in its own virtual environment in the build cache rather
# than in the project's .venv.
#
#   hack/checkov.sh install        create/refresh the venv (idempotent; prints the checkov path)
#   hack/checkov.sh scan FILE|DIR  scan rendered manifests, one JSON report on stdout (installs
#                                  first if needed; exit status 1 when a check fails)
set -euo pipefail

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
VENV="$CACHE_ROOT/checkov-venv"
CHECKOV="$VENV/bin/checkov"
PYTHON="${PYTHON:-python3}"

install_checkov() {
  if [[ -x "$CHECKOV" ]] && [[ "$("$VENV/bin/python" -m pip show checkov 2>/dev/null | sed -n 's/^Version: //p')" == "$CHECKOV_VERSION" ]]; then
    echo "$CHECKOV"
    return
  fi
  mkdir -p "$CACHE_ROOT"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  echo "$CHECKOV"
}

case "${1:-}" in
  install)
    install_checkov
    ;;
  scan)
    [[ $# -eq 2 ]] || { echo "usage: $0 scan FILE|DIR" >&2; exit 2; }
    target="$2"
    install_checkov >/dev/null
    if [[ -d "$target" ]]; then flag=--directory; else flag=--file; fi
    # Kubernetes checks only, offline: no platform upload, no download of external checks.
    BC_SKIP_MAPPING=TRUE exec "$CHECKOV" --framework kubernetes --compact --output json --skip-download \
      "$flag" "$target"
    ;;
  *)
    echo "usage: $0 install | scan FILE|DIR" >&2
    exit 2
    ;;
esac
