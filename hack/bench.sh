#!/usr/bin/env bash
# Runs the benchmark suite on the local environment (kube-apiserver, Phala Cloud simulator, anvil)
# and writes benchmarks/results/<timestamp>.json and .md. Set up first with hack/bootstrap.sh.
#   hack/bench.sh                      all six scenarios at full size (about 20 minutes)
#   hack/bench.sh --smoke              tiny sizes, to check the suite runs (about a minute)
#   hack/bench.sh --scenario reaction  one scenario (repeatable); see --help for the knobs
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m benchmarks "$@"
