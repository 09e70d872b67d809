#!/usr/bin/env bash
# Create ./.venv (once) and install deepgen with the versions in constraints.txt.
# torch goes first: left to the resolver, an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "deepgen needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.deepgen-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing deepgen and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  # TORCH_INDEX=https://download.pytorch.org/whl/cpu: the CPU-only build, for a machine without a GPU
  .venv/bin/python -m pip install -q -c constraints.txt ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
