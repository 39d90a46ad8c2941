#!/usr/bin/env bash
# The GPU check: at most ~8 minutes on one H100/H200-class GPU, after `make install`. From the repository root:
#   bash bench/gpu_check.sh                 # logs and JSON in bench/gpu_check/ (OUT=dir to choose)
# 1. bench/run.py --device cuda (quick): synthdata's training loop against a plain diffusers-style loop, MFU
#    against the GPU's bf16 matmul peak, sampling throughput;
# 2. the CUDA tests (tests/test_cuda.py: training, sampling from per-image seeds, bf16, the detector, 2 workers);
# 3. a two-generation loop on 50,000 procedurally generated 32x32 RGB images, the arm on the GPU (wall time of a
#    generation, peak memory);
# 4. sharded sampling with 1 and 2 workers sharing the GPU: images/s and identical images.
# Each step has its own time limit, so one that hangs cannot eat the others'; the script goes on past a failure
# and exits non-zero at the end if any step failed. Put the figures in bench/README.md (the GPU section).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-bench/gpu_check}
mkdir -p "$OUT"
failed=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  local start=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then echo "   ok in $((SECONDS - start))s"; else
    echo "   FAILED (exit $?) after $((SECONDS - start))s; tail of $OUT/$name.log:"; tail -20 "$OUT/$name.log"; failed+=("$name"); fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
step bench_run 150 $PY -m bench.run --device cuda --quick --out "$OUT/results.json"
step cuda_tests 90 $PY -m pytest -q -n 0 -p no:randomly tests/test_cuda.py -rs
step data 90 $PY -m bench.scale --data "$OUT/data" --sizes 50000 --data-only
step loop_50k 150 $PY -m bench.scale --data "$OUT/data" --sizes 50000 --loop-only --gpu --out "$OUT/scale.json"
step sampling 60 $PY -m bench.sampling --device cuda --n 8192
grep -h "images/s\|ok in\|FAILED" "$OUT"/*.log 2>/dev/null | tail -20
if ((${#failed[@]})); then echo "failed: ${failed[*]}"; exit 1; fi
echo "all steps passed; figures in $OUT/"
