#!/usr/bin/env bash
# The whole test suite: set-up, static checks (ruff, mypy --strict, import-linter), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo ">> ruff"
ruff check operator localenv tests benchmarks
ruff format --check operator localenv tests benchmarks
echo ">> mypy --strict"
mypy
echo ">> import-linter"
lint-imports
echo ">> pytest"
set +e
pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "pytest ran no test: failing" >&2
  exit 1
fi
exit $rc
