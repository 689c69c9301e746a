#!/usr/bin/env bash
# The course's one prepared script for a lent accelerator machine (it has its own python3 with
# torch; nothing is installed). Everything it writes goes to $OUT (default ./gpu_out).
#   bash benchmarks/gpu_check.sh            # = all, at most 9 minutes: versions; then the same budget trained to
#                                           #   the end on the GPU profile, under a 16 GiB cap (full FC at its limit,
#                                           #   AttFC at 5x and 10x) -> $OUT/large_n; then the three heads side by
#                                           #   side (python -m attfc_lite run --profile gpu) -> $OUT/run
#   bash benchmarks/gpu_check.sh checks     # render speed, CUDA tests, head benchmark and memory model on CUDA
#   bash benchmarks/gpu_check.sh sweeps     # the container-ratio ablation on the GPU profile -> $OUT/sweeps
#   bash benchmarks/gpu_check.sh large|run  # one of the two parts of all
#   bash benchmarks/gpu_check.sh every      # checks, all, sweeps (more than one device session's time on a GPU)
#   bash benchmarks/gpu_check.sh --tiny [part]  # the same path on the CPU at toy sizes (what the tests run)
set -u
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
OUT=${OUT:-gpu_out}
WHAT=${1:-all}
mkdir -p "$OUT/sweeps"
export PYTHONPATH=$PWD MPLBACKEND=Agg
PY=${PY:-python3}
log() { echo "== $* ($(date +%T))"; }
FAILED=0
# step LIMIT [--tail N] CMD...: run CMD under a time limit (showing only its last N lines); a
# failure is reported and counted, and the next step still runs.
step() {
  local limit=$1 lines=0 rc
  shift
  # the toy sizes run on a CPU the tests may share with other work: limits that catch a hang, not a slow machine
  if [ "$TINY" = 1 ]; then limit=$((limit * 5)); fi
  if [ "${1:-}" = "--tail" ]; then lines=$2; shift 2; fi
  if [ "$lines" -gt 0 ]; then
    timeout "$limit" "$@" > "$OUT/.step.log" 2>&1; rc=$?
    tail -n "$lines" "$OUT/.step.log"
  else
    timeout "$limit" "$@"; rc=$?
  fi
  if [ "$rc" -ne 0 ]; then echo "!! failed (exit $rc): $*"; FAILED=$((FAILED + 1)); fi
  return 0
}
if [ "$TINY" = 1 ]; then
  SIZES=(--profile cpu --classes 20 --images-per-identity 4 --eval-identities 10 --epochs 1 --batch-size 16
         --image-size 16 --embedding-dim 128 --device cpu --quiet)
else
  SIZES=(--profile gpu --quiet)  # attfc_lite.run.PROFILES["gpu"]: 100,000 identities, 112 px, ResNet-18, bf16
fi

versions() {
  log versions
  step 60 $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
}

checks() {
  if [ "$TINY" = 1 ]; then
    log render speed on the CPU, 32 px
    step 60 $PY -m attfc_lite data bench --device cpu --num-images 1024
    log memory of one AttFC head step, predicted and measured
    step 60 $PY -m attfc_lite memory --head attfc --classes 10000 --dim 64 --batch 32 --device cpu
    return
  fi
  log render speed on CUDA, 32 and 112 px
  step 45 $PY -m attfc_lite data bench --device cuda --num-images 65536
  step 45 $PY -m attfc_lite data bench --device cuda --num-images 16384 --image-size 112
  log unit tests that use CUDA, and the heads
  step 150 --tail 15 $PY -m pytest tests -q -x -p no:cacheprovider -k "cuda or attfc or partial_fc or memory" \
    --deselect tests/test_project.py
  log the three heads at N = 1e6, D = 512, B = 128 on CUDA
  step 120 --tail 8 $PY benchmarks/head_benchmark.py --device cuda --no-targets
  log memory model against CUDA for Partial FC and AttFC
  step 60 --tail 8 $PY benchmarks/memory_agreement.py --device cuda --head partial_fc --no-oom --classes 1000 100000 1000000
  step 60 --tail 8 $PY benchmarks/memory_agreement.py --device cuda --head attfc --no-oom --classes 1000 100000 1000000
}

large() {
  log same budget, trained to the end: python -m attfc_lite run --large-n-only
  if [ "$TINY" = 1 ]; then
    step 100 --tail 16 $PY -m attfc_lite run --large-n-only --large-n-mib 48 --large-n-heads fc attfc \
      --large-n-factors 5 10 --large-n-epochs 1 --large-n-steps 4 --large-n-images-per-identity 3 \
      --large-n-compare-keys --large-n-timeout 100 "${SIZES[@]}" --embedding-dim 128 --out "$OUT/large_n"
  else
    # Under a 16 GiB cap the largest N whose whole full FC step fits (ResNet-18, 112 px, B = 512, bf16),
    # then full FC there and AttFC at 5x and 10x, each for the same steps, with the schedule ending
    # there: what fits in this call's time, not epochs (an epoch of AttFC at 5x is millions of images).
    # keys other than the query: at 3 images per identity the official sampler gives 56 % of the
    # queries a key that is the query image (lesson 09)
    step 270 --tail 16 $PY -m attfc_lite run --large-n-only --large-n-mib 16384 --large-n-heads fc attfc \
      --large-n-factors 5 10 --large-n-epochs 1 --large-n-steps 300 --large-n-images-per-identity 3 \
      --large-n-timeout 120 --keys-exclude-query "${SIZES[@]}" --out "$OUT/large_n"
  fi
}

run() {
  log the heads side by side: python -m attfc_lite run
  if [ "$TINY" = 1 ]; then
    step 120 --tail 24 $PY -m attfc_lite run --seeds 0 --memory-classes 1000 "${SIZES[@]}" --out "$OUT/run"
  else
    # the three heads on the GPU profile, and each head's step alone at 1,000,000 identities
    step 240 --tail 24 $PY -m attfc_lite run --seeds 0 "${SIZES[@]}" --out "$OUT/run"
  fi
}

sweeps() {
  # The container-ratio ablation (accuracy against head memory) on this device's profile.
  local spec="dcc-ratio --values 0.03 0.3 1.0"
  if [ "$TINY" = 1 ]; then spec="dcc-ratio --values 0.1 1.0"; fi
  log sweep $spec
  step 330 --tail 8 $PY -m attfc_lite sweep $spec --seeds 0 "${SIZES[@]}" --out "$OUT/sweeps/dcc_ratio.json"
}

{
case "$WHAT" in
  all) versions; large; run ;;
  large) versions; large ;;
  run) versions; run ;;
  checks) versions; checks ;;
  sweeps) versions; sweeps ;;
  every) versions; checks; large; run; sweeps ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--tiny] [all|large|run|checks|sweeps|every]"; exit 2 ;;
esac
log "done: $FAILED step(s) failed"
exit $(( FAILED > 0 ))
} 2>&1 | tee "$OUT/gpu_check_$WHAT.log"
exit "${PIPESTATUS[0]}"
