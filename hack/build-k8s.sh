#!/usr/bin/env bash
# Builds kube-apiserver and kubectl from the Go module k8s.io/kubernetes at a pinned release,
# through a throwaway go.mod that swaps each staging module for its published v0.Y.Z.
# Binaries are cached outside the clone, keyed by version, so a warm run costs nothing.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
OUT="$CACHE_ROOT/k8s-$K8S_VERSION"
# Bump when the build recipe changes, so cached binaries from an older recipe get rebuilt.
RECIPE=2

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/kubectl" && "$(cat "$OUT/.recipe" 2>/dev/null)" == "$RECIPE" ]]; then
  echo "$OUT"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  exit 1
fi

staging_version="v0.${K8S_VERSION#v1.}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
go_directive="$(awk '/^go [0-9]/ {print $2; exit}' "$gomod")"

{
  echo "module cvm-prelaunch-operator/k8s-build"
  echo
  echo "go $go_directive"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  # Every "k8s.io/x => ./staging/src/k8s.io/x" line of upstream's replace block becomes a published version.
  grep -E '=> \./staging/src/' "$gomod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO

GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null

# Stamp the release into the binaries the way upstream's hack/lib/version.sh does; unstamped, they
# report "v0.0.0-master+$Format:%H$", which `kubectl version` cannot even parse.
release_time="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])')"
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$release_time"
done

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp" "$OUT"
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$OUT.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$OUT.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
# rename(2) per file: processes already running keep their binary, new ones get the new one, and
# no moment exists where a binary is missing.
mv -f "$OUT.tmp/kube-apiserver" "$OUT/kube-apiserver"
mv -f "$OUT.tmp/kubectl" "$OUT/kubectl"
echo "$RECIPE" > "$OUT/.recipe"
rmdir "$OUT.tmp"
echo "$OUT"
