#!/usr/bin/env bash
# Compiles the lock files, for CPython 3.11 on linux x86_64 (the image's platform):
#
#   requirements.lock      the operator's runtime dependencies (pyproject.toml [project.dependencies]),
#                          every file's sha256, for `pip install --require-hashes` (the image)
#   requirements-dev.lock  everything tests and linters need (requirements-dev.in), the runtime
#                          packages at the same versions as requirements.lock
#
#   hack/lock.sh                           after a dependency was added or removed; pins that are
#                                          still allowed stay as they are
#   hack/lock.sh --upgrade                 every pin to the newest allowed version
#   hack/lock.sh --upgrade-package NAME    one package (repeatable)
#
# Re-running it without changes rewrites both files byte for byte; it takes about a second when
# uv's cache is warm.
set -euo pipefail
cd "$(dirname "$0")/.."

common=(
  --quiet
  --python-version 3.11
  --python-platform x86_64-unknown-linux-gnu
  --custom-compile-command "hack/lock.sh"
)

bash hack/uv.sh pip compile "${common[@]}" --generate-hashes "$@" pyproject.toml -o requirements.lock
bash hack/uv.sh pip compile "${common[@]}" "$@" \
  --constraint requirements.lock \
  --no-emit-package cvm-prelaunch-operator --no-emit-package cvm-prelaunch-localenv \
  requirements-dev.in -o requirements-dev.lock
