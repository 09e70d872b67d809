#!/usr/bin/env bash
# Every GPU benchmark in one device call, eager then compiled; each log goes to $OUT (default
# benchmarks/out). A lent GPU machine has torch and transformers but not pydantic: carry `.whl`
# (../shared/tools/gpu-wheels.sh) and it is installed to /tmp/site first.
#   run: bash benchmarks/gpu.sh          (carry: .whl)
#   smoke on a CPU: GAN_ARGS="--device cpu --size 32 --batch 8 --steps 2 --warmup 1" \
#     BERT_ARGS="--device cpu --layers 2 --hidden 64 --heads 2 --batch 8 --seq 32 --steps 3" bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$out/machine.txt"
for flag in "" --compile; do
  suffix=${flag:+-compiled}
  timeout 180 python3 benchmarks/gan_step.py $flag ${GAN_ARGS:-} 2>&1 | tee "$out/gan_step$suffix.log"
  timeout 240 python3 benchmarks/bert_pretrain.py $flag ${BERT_ARGS:-} 2>&1 | tee "$out/bert_pretrain$suffix.log"
done
