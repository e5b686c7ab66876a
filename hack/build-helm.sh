#!/usr/bin/env bash
# Builds helm from the Go module helm.sh/helm/v4 (cmd/helm) at a pinned release, for the tests of
# deploy/helm and for hack/release.sh. The module has no replace directives, so `go install` builds
# exactly upstream's dependency versions; the version is stamped the way upstream's Makefile does.
# Cached outside the clone, keyed by version, so a warm run costs nothing; cold, about 2 minutes on
# 2 cores.
#
#   hack/build-helm.sh           prints the directory of the helm binary (building it if needed)
#   hack/build-helm.sh --check   the same, but fails instead of building
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
OUT="$CACHE_ROOT/helm-$HELM_VERSION"
# Bump when the build recipe changes, so a binary from an older recipe gets rebuilt.
RECIPE=1

if [[ -x "$OUT/helm" && "$(cat "$OUT/.recipe" 2>/dev/null)" == "$RECIPE" ]]; then
  echo "$OUT"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp" "$OUT"
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
GOBIN="$OUT.tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 \
  go install -trimpath -ldflags="$ldflags" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
# rename(2), as hack/build-k8s.sh does: a running test keeps its binary.
mv -f "$OUT.tmp/helm" "$OUT/helm"
echo "$RECIPE" > "$OUT/.recipe"
rmdir "$OUT.tmp"
echo "$OUT"
