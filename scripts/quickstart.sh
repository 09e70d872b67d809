#!/usr/bin/env bash
# Set up .venv and run the quickstart pipeline: digits -> Parquet -> Ray Train -> threshold -> MLflow registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/deepgen run pipelines/quickstart.yaml "$@"
