#!/usr/bin/env bash
# Builds the release artifacts of VERSION into dist/ (or $DIST), publishing nothing:
#
#   crd.yaml                                    the CustomResourceDefinition (deploy/crd)
#   operator.yaml                               the operator, watching every namespace
#                                               (deploy/overlays/cluster-wide), image tag pinned
#   install.yaml                                both: crd.yaml, then operator.yaml
#   cvm-prelaunch-operator-VERSION.tgz          the Helm chart (version and appVersion VERSION)
#   cvm_prelaunch_operator-VERSION-py3-none-any.whl
#   cvm-prelaunch-operator-VERSION.oci.tar      the image, an OCI archive tagged VERSION
#   image-digest.txt                            its manifest digest (stays the same when the archive
#                                               is copied to a registry as it is)
#   SHA256SUMS
#
#   hack/release.sh VERSION      VERSION must be the package's (operator/cvm_prelaunch_operator/__init__.py)
#
# Publishing is a separate step, by hand or by CI, e.g.:
#   skopeo copy oci-archive:dist/cvm-prelaunch-operator-VERSION.oci.tar docker://ghcr.io/phala-network/cvm-prelaunch-operator:VERSION
#   helm push dist/cvm-prelaunch-operator-VERSION.tgz oci://ghcr.io/phala-network/charts
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

[[ $# -eq 1 ]] || { echo "usage: $0 VERSION" >&2; exit 2; }
version="$1"
package_version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/cvm_prelaunch_operator/__init__.py)"
if [[ "$version" != "$package_version" ]]; then
  echo "VERSION $version is not the package's version $package_version: set __version__ in" \
    "operator/cvm_prelaunch_operator/__init__.py (and the chart's Chart.yaml) first" >&2
  exit 1
fi
REPOSITORY="${IMAGE_REPOSITORY:-ghcr.io/phala-network/cvm-prelaunch-operator}"
DIST="${DIST:-$root/dist}"

bash hack/bootstrap.sh >&2
kubectl="$(K8S_QUIET=1 bash hack/build-k8s.sh)/kubectl"
helm="$(bash hack/build-helm.sh)/helm"
work="$(mktemp -d)"
store=""
cleanup() {
  [[ -n "$store" ]] && bash hack/image.sh buildah "$store" rm --all >/dev/null 2>&1 || true
  rm -rf "$work" ${store:+"$store"}
}
trap cleanup EXIT

mkdir -p "$DIST"
rm -f "$DIST"/crd.yaml "$DIST"/operator.yaml "$DIST"/install.yaml "$DIST"/image-digest.txt "$DIST"/SHA256SUMS \
  "$DIST"/cvm-prelaunch-operator-*.tgz "$DIST"/cvm_prelaunch_operator-*.whl "$DIST"/cvm-prelaunch-operator-*.oci.tar

echo ">> manifests" >&2
"$kubectl" kustomize deploy/crd > "$DIST/crd.yaml"
# The overlay with the image pinned to this release, through a kustomization of the release's own.
mkdir -p "$work/operator"
cat > "$work/operator/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$work/operator" "$root/deploy/overlays/cluster-wide")
images:
  - name: ghcr.io/phala-network/cvm-prelaunch-operator
    newName: $REPOSITORY
    newTag: "$version"
EOF
"$kubectl" kustomize "$work/operator" > "$DIST/operator.yaml"
grep -q "image: $REPOSITORY:$version\$" "$DIST/operator.yaml" || {
  echo "operator.yaml does not name the image $REPOSITORY:$version" >&2
  exit 1
}
{ cat "$DIST/crd.yaml"; echo "---"; cat "$DIST/operator.yaml"; } > "$DIST/install.yaml"

echo ">> Helm chart" >&2
"$helm" lint --strict deploy/helm/cvm-prelaunch-operator >&2
"$helm" package deploy/helm/cvm-prelaunch-operator --version "$version" --app-version "$version" \
  --destination "$DIST" >&2

echo ">> wheel" >&2
.venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/wheel" . >&2
mv "$work"/wheel/cvm_prelaunch_operator-"$version"-py3-none-any.whl "$DIST/"

echo ">> image" >&2
store="$(mktemp -d)"
bash hack/image.sh build "$store" "$REPOSITORY:$version" "$version" >/dev/null
bash hack/image.sh buildah "$store" push --quiet --digestfile "$DIST/image-digest.txt" "$REPOSITORY:$version" \
  "oci-archive:$DIST/cvm-prelaunch-operator-$version.oci.tar:$REPOSITORY:$version" >&2

(cd "$DIST" && sha256sum crd.yaml operator.yaml install.yaml "cvm-prelaunch-operator-$version.tgz" \
  "cvm_prelaunch_operator-$version-py3-none-any.whl" "cvm-prelaunch-operator-$version.oci.tar" > SHA256SUMS)
echo ">> release $version in $DIST (image $REPOSITORY:$version@$(cat "$DIST/image-digest.txt"))" >&2
ls -1 "$DIST"
