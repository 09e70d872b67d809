#!/usr/bin/env bash
# Set up .venv, run the test suite, then lint. "No tests ran" (pytest exit 5) is a failure, not a pass.
#   bash scripts/test.sh          the fast suite: every test but those marked slow (14 minutes on 2 cores)
#   bash scripts/test.sh --all    every test, the slow ones too (killed drivers and workers, a server outage,
#                                 Tune sweeps, a second Ray node: minutes each); CI runs this
# Any other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
select=(-m "not slow")
args=()
for a in "$@"; do
  if [ "$a" = "--all" ]; then select=(); else args+=("$a"); fi
done
bash scripts/setup.sh
status=0
# Two test processes, a test file each at a time (its module fixtures set up once): most of the slow tests
# wait on Ray and MLflow processes starting, so two overlap well even on 2 cores. DEEPGEN_TEST_WORKERS=0: one.
.venv/bin/python -m pytest tests -n "${DEEPGEN_TEST_WORKERS:-2}" --dist loadfile ${select[@]+"${select[@]}"} \
  ${args[@]+"${args[@]}"} || status=$?
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
