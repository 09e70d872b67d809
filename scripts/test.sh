#!/usr/bin/env bash
# Set up .venv, run the whole test suite, then lint. "No tests ran" (pytest exit 5) is a failure, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/python -m pytest tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; failing" >&2
  exit 1
fi
lint=0
.venv/bin/ruff check . || lint=$?
if [ "$status" -eq 0 ] && [ "$lint" -ne 0 ]; then
  echo "test.sh: tests passed but ruff found problems (above)" >&2
  exit 1
fi
exit "$status"
