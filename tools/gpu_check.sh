#!/usr/bin/env bash
# The GPU check (issue 16) for a lent CUDA machine: one call, every step bounded in time, results under $OUT.
#   bash tools/gpu_check.sh [STEP ...]    STEP: env tests bench grid (default: all four, in that order)
# GPU_CHECK_BUDGET_S (default 560) bounds the whole call; a step gets at most its own cap and what is left.
#   env    the device, driver and torch, and the measured ceilings (bf16 matmul, device copy) -> device.json
#   tests  pytest -m cuda (tests/test_cuda.py): bf16, compile default and reduce-overhead, CUDA graphs with live
#          dropout rates, stacked members, KV-cache generation, resume on CUDA -> cuda_tests.xml, cuda_records.jsonl
#   bench  `dropout-residual bench train|grid|generate --device cuda` -> figures.jsonl (the Benchmarks page's format)
#   grid   the paper-2 grid at the paper preset (5 schedules x 3 seeds), then the paper-1 grid, in
#          $DROPOUT_RESIDUAL_RUNS (default runs/gpu): resumable, so a later call on the same machine continues it;
#          run tables and histories (no checkpoints) -> runs.tgz
# The machine has no internet: the corpus is .gpu/input.txt and a fastcore wheel in .gpu/ is installed if missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET_S:-560}
STEPS=${*:-env tests bench grid}
T0=$SECONDS
DEV=${GPU_CHECK_DEVICE:-cuda}   # cpu only to try the script itself on a machine without a GPU
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export DROPOUT_RESIDUAL_DATA=${DROPOUT_RESIDUAL_DATA:-$PWD/.gpu/input.txt}
export DROPOUT_RESIDUAL_CACHE=${DROPOUT_RESIDUAL_CACHE:-/tmp/dropout-residual-cache}
export DROPOUT_RESIDUAL_RUNS=${DROPOUT_RESIDUAL_RUNS:-$PWD/runs/gpu}
export DROPOUT_RESIDUAL_CUDA_RECORD="$OUT/cuda_records.jsonl"
if ! python3 -c "import fastcore" 2>/dev/null && ls .gpu/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v dropout-residual >/dev/null; then   # the package's CLI without installing it
  mkdir -p /tmp/bin
  printf '#!/bin/sh\nexec python3 -c "import sys; from dropout_residual.cli import main; sys.exit(main())" "$@"\n' > /tmp/bin/dropout-residual
  chmod +x /tmp/bin/dropout-residual; export PATH=/tmp/bin:$PATH
fi

run() {  # NAME CAP_S COMMAND...: run COMMAND for at most CAP_S seconds (less if the budget is short), log it
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - (SECONDS - T0) - 45 ))   # 30 s of grace after SIGTERM, 15 to pack
  (( left < cap )) && cap=$left
  if (( cap < 15 )); then printf '%s\tskipped\t0\t%s\n' "$name" "$cap" >> "$OUT/steps.tsv"; echo "== $name: skipped (no time left)"; return; fi
  local t=$SECONDS
  echo "== $name (cap ${cap} s): $*" >> "$OUT/log.txt"
  timeout --signal=TERM --kill-after=30 "$cap" "$@" >> "$OUT/log.txt" 2>&1; local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t ))" "$cap" >> "$OUT/steps.tsv"
  echo "== $name: rc=$rc in $(( SECONDS - t )) s (cap $cap s)"
}

for s in $STEPS; do case $s in
env)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1
  run env 60 python3 tools/gpu_ceilings.py "$OUT/device.json" ;;
tests)
  run tests 170 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py --junitxml="$OUT/cuda_tests.xml" ;;
bench)
  S=(--device "$DEV" --save "$OUT/figures.jsonl")
  run bench-grid 80 dropout-residual bench grid --compile off "${S[@]}"
  run bench-generate 45 dropout-residual bench generate "${S[@]}"
  run bench-generate-bf16 30 dropout-residual bench generate --dtype bfloat16 "${S[@]}"
  run bench-train-eager 30 dropout-residual bench train --compile off "${S[@]}"
  run bench-train 90 dropout-residual bench train "${S[@]}" ;;
grid)   # as far as the budget goes; SIGTERM at the cap saves a checkpoint at a step boundary (resumable)
  C=(--preset paper --device "$DEV" --set ckpt_interval=1000)
  run paper2-grid 3600 dropout-residual sweep paper2 --seeds 3 "${C[@]}"
  run paper1-grid 3600 dropout-residual sweep paper1 --seeds 3 "${C[@]}" ;;
*) echo "unknown step $s (env tests bench grid)"; exit 2 ;;
esac; done

if [ -d "$DROPOUT_RESIDUAL_RUNS" ]; then
  tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.lock' -C "$(dirname "$DROPOUT_RESIDUAL_RUNS")" "$(basename "$DROPOUT_RESIDUAL_RUNS")"
fi
echo "== steps (name, rc, seconds, cap)"; cat "$OUT/steps.tsv"
if [ -f "$OUT/figures.jsonl" ]; then echo "== bench records (scalars)"; python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line); r = r.get("record", r)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if not isinstance(v, (list, dict))})[:900])
' "$OUT/figures.jsonl"; fi
[ -f "$OUT/cuda_records.jsonl" ] && { echo "== cuda test records"; cut -c1-400 "$OUT/cuda_records.jsonl"; }
echo "== the log's last lines"; grep -v '^\s*$' "$OUT/log.txt" | tr '\r' '\n' | grep -v "it/s\]$\|s/it\]$" | tail -n 40
