#!/usr/bin/env bash
# The operator's image, built from the Dockerfile without a Docker engine: buildah (chroot isolation,
# vfs storage) on a Debian base made locally with mmdebstrap, since registry images cannot be pulled
# everywhere this runs (CI included).
#
#   hack/image.sh tools                      install buildah and mmdebstrap (apt-get) if missing
#   hack/image.sh base                       the base's root filesystem (a tarball in the build
#                                            cache, built once per recipe); prints its path
#   hack/image.sh build STORE TAG [VERSION]  build the Dockerfile into the buildah storage under
#                                            STORE (a directory of the caller's), tagged TAG
#   hack/image.sh buildah STORE ARGS...      buildah on that storage (run, inspect, push, rmi...)
#
# The base is Debian's python3 (3.11 on bookworm, the interpreter the lock files are for) with
# python-is-python3, bash and dash (the script gate runs `bash -n` and `sh -n`), CA certificates and a
# pip from PyPI (Debian's own pip cannot run `pip --python` against the image's venv). The build
# machine's pip settings (index, CA bundle) are mounted into the build's RUN steps, never copied into
# a layer: the image keeps only buildah's empty mount points.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

CACHE_ROOT="${CVM_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvm-prelaunch-operator}"
BASE_SUITE="${BASE_SUITE:-bookworm}"
BASE_PACKAGES="python3,python-is-python3,bash,dash,ca-certificates"
# pip for the base, from PyPI, checked against its hash.
BASE_PIP="pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
# Bump when the recipe below changes in a way the inputs above do not show.
BASE_RECIPE=1
BASE_TAG_NAME="localhost/cvm-prelaunch-base"

say() { echo ">> $*" >&2; }
# Temporary directories of this run, removed however it ends.
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

cmd_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $EUID -ne 0 ]]; then
    echo "missing: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    return 1
  fi
  say "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# The machine's apt sources for Debian itself, so the base comes from the mirror this machine uses.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s "$f" ]] && grep -q '^[^#]' "$f"; then
      echo "$f"
      return
    fi
  done
}

base_key() {
  local sources
  sources="$(apt_sources)"
  {
    echo "recipe=$BASE_RECIPE suite=$BASE_SUITE packages=$BASE_PACKAGES pip=$BASE_PIP"
    [[ -n "$sources" ]] && cat "$sources"
  } | sha256sum | cut -c1-16
}

cmd_base() {
  cmd_tools
  local key out
  key="$(base_key)"
  out="$CACHE_ROOT/image-base/$BASE_SUITE-$key.tar"
  if [[ -s "$out" ]]; then
    echo "$out"
    return
  fi
  say "building the base image's root filesystem with mmdebstrap ($BASE_SUITE; cold: about a minute)"
  mkdir -p "$CACHE_ROOT/image-base"
  local work
  work="$(mktemp -d)"
  cleanup+=("$work")
  echo "$BASE_PIP" > "$work/pip.txt"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$work/pip.txt" -d "$work/pip" >&2
  local wheel
  wheel="$(basename "$work"/pip/pip-*.whl)"
  local mirror=()
  local sources
  sources="$(apt_sources)"
  [[ -n "$sources" ]] && mirror=("$sources")
  # variant "essential": no apt or dpkg databases the operator never uses; docs, manuals and
  # translations are left out. EXTERNALLY-MANAGED goes, as in the registry's python images, whose
  # system interpreter is the one the image is made for. ("$1" is mmdebstrap's, not ours.)
  # shellcheck disable=SC2016
  mmdebstrap --quiet --variant=essential --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="copy-in '$work/pip/$wheel' /tmp" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook="chroot \"\$1\" python3 /tmp/$wheel/pip install --quiet --no-index --no-cache-dir --root-user-action=ignore --disable-pip-version-check /tmp/$wheel" \
    --customize-hook="rm -f \"\$1\"/tmp/$wheel" \
    "$BASE_SUITE" "$work/base.tar" "${mirror[@]}" >&2
  # Older recipes' tarballs go: the cache holds one base.
  find "$CACHE_ROOT/image-base" -maxdepth 1 -name '*.tar' ! -name "$(basename "$out")" -delete
  mv "$work/base.tar" "$out"
  echo "$out"
}

storage_buildah() {
  local store="$1"
  shift
  buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"
}

# The base as an image in STORE (imported from the cached tarball once per storage); prints its name.
base_image() {
  local store="$1" tarball key name container
  tarball="$(cmd_base)"
  key="$(basename "$tarball" .tar)"
  name="$BASE_TAG_NAME:$key"
  if ! storage_buildah "$store" inspect --type image "$name" >/dev/null 2>&1; then
    container="$(storage_buildah "$store" from --quiet scratch)"
    storage_buildah "$store" add --quiet "$container" "$tarball" / >/dev/null
    storage_buildah "$store" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd python3 "$container"
    storage_buildah "$store" commit --quiet "$container" "$name" >/dev/null
    storage_buildah "$store" rm "$container" >/dev/null
  fi
  echo "$name"
}

# pip's settings for the build: this machine's index settings and CA bundle, in a private directory.
write_pip_settings() {
  local dir="$1"
  python3 - "$dir/pip.conf" <<'PY'
import configparser, os, subprocess, sys

keys = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries", "proxy")
settings = {}
listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
).stdout
for line in listed.splitlines():
    name, _, value = line.partition("=")
    section, _, key = name.partition(".")
    if key in keys:
        settings[key] = value.strip().strip("'\"")
for key in keys:
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value:
        settings[key] = value
settings["cert"] = "/etc/pip-build-ca.pem"
config = configparser.ConfigParser()
config["global"] = settings
with open(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    config.write(out)
PY
  local ca="${PIP_CERT:-}"
  [[ -z "$ca" ]] && ca="$(python3 -m pip config get global.cert 2>/dev/null || true)"
  [[ -z "$ca" && -n "${SSL_CERT_FILE:-}" ]] && ca="$SSL_CERT_FILE"
  [[ -z "$ca" ]] && ca=/etc/ssl/certs/ca-certificates.crt
  cp "$ca" "$dir/ca.pem"
}

cmd_build() {
  [[ $# -ge 2 ]] || { echo "usage: $0 build STORE TAG [VERSION]" >&2; exit 2; }
  local store="$1" tag="$2" version="${3:-}"
  [[ -n "$version" ]] || version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/operator/cvm_prelaunch_operator/__init__.py")"
  cmd_tools
  mkdir -p "$store"
  local base settings
  base="$(base_image "$store")"
  settings="$(mktemp -d)"
  cleanup+=("$settings")
  write_pip_settings "$settings"
  say "building $tag from the Dockerfile on $base"
  storage_buildah "$store" bud --quiet --isolation chroot --network host --layers=false \
    --volume "$settings/pip.conf:/etc/pip.conf:ro" --volume "$settings/ca.pem:/etc/pip-build-ca.pem:ro" \
    --build-arg "PYTHON_IMAGE=$base" --build-arg "VERSION=$version" \
    --tag "$tag" --file "$root/Dockerfile" "$root" >/dev/null
  echo "$tag"
}

case "${1:-}" in
  tools) cmd_tools ;;
  base) cmd_base ;;
  build) shift; cmd_build "$@" ;;
  buildah)
    shift
    [[ $# -ge 1 ]] || { echo "usage: $0 buildah STORE ARGS..." >&2; exit 2; }
    store="$1"
    shift
    # exec: a signal to this script reaches buildah itself (and through it, what it runs).
    exec buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"
    ;;
  *)
    echo "usage: $0 tools | base | build STORE TAG [VERSION] | buildah STORE ARGS..." >&2
    exit 2
    ;;
esac
