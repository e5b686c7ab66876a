#!/usr/bin/env bash
# The end-to-end demo on the embedded local environment: installs what is missing, starts a real
# kube-apiserver + etcd, anvil and the Phala Cloud simulator, runs the operator, syncs an off-chain
# and an on-chain CVM, re-syncs after a ConfigMap edit, prints kubectl output, tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
exec .venv/bin/cvm-prelaunch-localenv demo "$@"
