#!/usr/bin/env bash
# Every GPU measurement of issue 19 in one device call of at most 600 s: the step benchmarks against their
# peers (gan_step.py, bert_pretrain.py, eager then compiled), Ray Train's overhead (train_overhead.py) and
# every shipped pipeline once through Ray Train with scaling.use_gpu (gpu_pipelines.py). Each step has its
# own timeout and writes its log to $OUT (default benchmarks/out) line by line, so a step cut short still
# leaves what it printed, and a summary line per step goes to $OUT/summary.txt.
#
# Before the call, here (the GPU machine has torch and transformers, not Ray, pydantic, PyYAML or the data):
#   bash ../shared/tools/gpu-wheels.sh && EXTRA_WHEELS=pyyaml ...    (fills .whl; see benchmarks/README.md)
#   .venv/bin/python benchmarks/gpu_pipelines.py prepare             (fills benchmarks/out/gpu-data)
# The call: bash benchmarks/gpu.sh, carrying .whl and benchmarks/out/gpu-data, timeout_s 600.
# A CPU smoke of the whole script (small shapes, every argument overridable):
#   GAN_ARGS="--device cpu --size 16 --ngf 8 --ndf 8 --batch 8 --steps 2 --warmup 1" \
#   BERT_ARGS="--device cpu --layers 2 --hidden 64 --heads 2 --batch 8 --seq 32 --steps 2 --warmup 1" \
#   OVERHEAD_ARGS="--device cpu --rows 2000 --epochs 2" PIPELINE_ARGS="--epochs 1 --only quickstart" \
#   COMPILED=0 PYTHON=.venv/bin/python bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
py=${PYTHON:-python3}
mkdir -p "$out"
export RAY_memory_monitor_refresh_ms=0 PYTHONUNBUFFERED=1  # see ../shared/tools/README.md
if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, one summary line
  local name=$1 secs=$2 start=$SECONDS
  shift 2
  echo "=== $name (timeout ${secs}s) $(date -u +%T)"
  timeout -k 5 "$secs" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc $rc$([ "$rc" = 124 ] && echo ' (timed out)') in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py - <<'EOF'
import importlib
for name in ("torch", "transformers", "ray", "pyarrow", "pydantic", "yaml", "numpy", "pandas", "sklearn"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
EOF
} 2>&1 | tee "$out/machine.txt"

# point 2: the steps against their peers, eager (the pipeline's default) first
step gan_step 45 $py benchmarks/gan_step.py ${GAN_ARGS:-}
step bert_pretrain 75 $py benchmarks/bert_pretrain.py ${BERT_ARGS:-}
step train_overhead 100 $py benchmarks/train_overhead.py \
  ${OVERHEAD_ARGS:---device cuda --hidden 8192,8192,2048 --batch-size 1024 --rows 20000 --epochs 4 --two-workers-one-gpu}
# point 4: every shipped pipeline through Ray Train, scaling.use_gpu: true, at most 2 epochs each
step pipelines 150 $py benchmarks/gpu_pipelines.py train --results "$out/pipelines.jsonl" --budget-s 120 \
  ${PIPELINE_ARGS:---gpu --epochs 2}
# compiled last: the compiles are the longest and least certain steps
if [ "${COMPILED:-1}" = 1 ]; then
  step bert_pretrain-compiled 130 $py benchmarks/bert_pretrain.py --compile ${BERT_ARGS:---steps 10 --warmup 3}
  step gan_step-compiled 50 $py benchmarks/gan_step.py --compile ${GAN_ARGS:---steps 30 --warmup 5}
fi
cat "$out/summary.txt"
