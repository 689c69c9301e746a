#!/usr/bin/env bash
# The GPU checks of the course, as one script for a lent accelerator machine (it has its own
# python3 with torch; nothing is installed). Everything it writes goes to $OUT (default ./gpu_out).
#   bash benchmarks/gpu_check.sh            # checks, then the sweeps
#   bash benchmarks/gpu_check.sh checks     # versions, render speed, CUDA tests, memory, the heads at N = 1e6
#   bash benchmarks/gpu_check.sh sweeps     # the stored sweeps (dcc-ratio, ema-momentum, k) on this GPU
set -u
OUT=${OUT:-gpu_out}
WHAT=${1:-all}
mkdir -p "$OUT/sweeps"
export PYTHONPATH=$PWD MPLBACKEND=Agg
PY=${PY:-python3}
log() { echo "== $* ($(date +%T))"; }

checks() {
  log versions
  $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
  log render speed on CUDA, 32 and 112 px
  timeout 45 $PY -m attfc_lite data bench --device cuda --num-images 65536
  timeout 45 $PY -m attfc_lite data bench --device cuda --num-images 16384 --image-size 112
  log unit tests that use CUDA, and the heads
  timeout 150 $PY -m pytest tests -q -x -p no:cacheprovider -k "cuda or attfc or partial_fc or memory" \
    --deselect tests/test_project.py 2>&1 | tail -15
  log the three heads at N = 1e6, D = 512, B = 128 on CUDA
  timeout 120 $PY benchmarks/head_benchmark.py --device cuda --no-targets 2>&1 | tail -8
  log memory model against CUDA for Partial FC and AttFC
  timeout 60 $PY benchmarks/memory_agreement.py --device cuda --head partial_fc --no-oom --classes 1000 100000 1000000 2>&1 | tail -8
  timeout 60 $PY benchmarks/memory_agreement.py --device cuda --head attfc --no-oom --classes 1000 100000 1000000 2>&1 | tail -8
}

sweeps() {
  # The CPU default configuration, on this GPU; each sweep is its own file.
  for spec in "k --values 1 2 3 4" "ema-momentum --values 0.9 0.99 0.999" "dcc-ratio --values 0.01 0.03 0.1 0.3 0.6 1.0"; do
    set -- $spec
    name=${1//-/_}
    log sweep $spec
    timeout 300 $PY -m attfc_lite sweep $spec --seeds 0 1 --quiet --out "$OUT/sweeps/$name.json" 2>&1 | tail -8
  done
}

{
case "$WHAT" in
  checks) checks ;;
  sweeps) sweeps ;;
  all) checks; sweeps ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [checks|sweeps|all]"; exit 2 ;;
esac
} 2>&1 | tee "$OUT/gpu_check_$WHAT.log"
