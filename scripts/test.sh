#!/usr/bin/env bash
# Set up .venv and run the whole test suite. "No tests ran" (pytest exit 5) is a failure, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/python -m pytest tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$status"
