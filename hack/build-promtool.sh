#!/usr/bin/env bash
# Builds promtool from the Go module github.com/prometheus/prometheus at a pinned release, and
# promql-names (hack/promql-names: the metric names a PromQL expression selects, by Prometheus' own
# parser), for the tests of deploy/monitoring. Service discovery plugins are left out
# (-tags remove_all_sd): the rules tests need none, and they are most of the build. Also copies the
# ServiceMonitor and PrometheusRule CRDs from the Go module of the Prometheus Operator (crds/), which
# the tests install in the local API server to validate deploy/monitoring against their schemas.
# Binaries are cached outside the clone, keyed by version, so a warm run costs nothing; cold, about
# 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
OUT="$CACHE_ROOT/promtool-$PROMETHEUS_VERSION"
# The recipe: this script's version and the helper's source; a change of either rebuilds.
RECIPE="2-$PROMETHEUS_OPERATOR_VERSION-$(sha256sum hack/promql-names/main.go | cut -c1-16)"

if [[ -x "$OUT/promtool" && -x "$OUT/promql-names" && -d "$OUT/crds" && "$(cat "$OUT/.recipe" 2>/dev/null)" == "$RECIPE" ]]; then
  echo "$OUT"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi

helper_src="$PWD/hack/promql-names/main.go"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp" "$OUT"

ldflags="-s -w"
for var in Version=$PROMETHEUS_VERSION Branch= Revision=$PROMETHEUS_VERSION; do
  ldflags+=" -X github.com/prometheus/common/version.$var"
done

# promtool with the module's own go.mod (no replace directives upstream): exactly upstream's versions.
GOBIN="$OUT.tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 \
  go install -tags remove_all_sd -trimpath -ldflags="$ldflags" \
  "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"

# The helper in a throwaway module that requires the same release; missing requirements are filled
# in from that release's module graph (-mod=mod), so its parser is the one promtool was built with.
go_directive="$(go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" \
  | python3 -c 'import json,re,sys; print(re.search(r"(?m)^go (\S+)", open(json.load(sys.stdin)["GoMod"]).read()).group(1))')"
cp "$helper_src" "$work/main.go"
printf 'module cvm-prelaunch-operator/promql-names\n\ngo %s\n\nrequire github.com/prometheus/prometheus %s\n' \
  "$go_directive" "$PROMETHEUS_VERSION" > "$work/go.mod"
(cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$OUT.tmp/promql-names" .)

operator_dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$OUT.tmp/crds"
for kind in servicemonitors prometheusrules; do
  cp "$operator_dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$OUT.tmp/crds/"
done
chmod -R u+w "$OUT.tmp/crds"  # the module cache is read-only

# rename(2) per file, as hack/build-k8s.sh does: a running test keeps its binary.
mv -f "$OUT.tmp/promtool" "$OUT/promtool"
mv -f "$OUT.tmp/promql-names" "$OUT/promql-names"
rm -rf "$OUT/crds" && mv "$OUT.tmp/crds" "$OUT/crds"
echo "$RECIPE" > "$OUT/.recipe"
rmdir "$OUT.tmp"
echo "$OUT"
