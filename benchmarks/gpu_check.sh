#!/usr/bin/env bash
# The GPU checks of the course, as one script for a lent accelerator machine (it has its own
# python3 with torch; nothing is installed). Logs go to $OUT (default ./gpu_out).
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD MPLBACKEND=Agg
PY=${PY:-python3}
log() { echo "== $*"; }
{
log versions
$PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
log render speed on CUDA, 32 and 112 px
timeout 45 $PY -m attfc_lite data bench --device cuda --num-images 65536
timeout 45 $PY -m attfc_lite data bench --device cuda --num-images 16384 --image-size 112
log unit tests with CUDA visible \(device auto = cuda\)
timeout 120 $PY -m pytest tests -q -x -p no:cacheprovider --deselect tests/test_project.py 2>&1 | tail -15
log memory: predicted vs measured on CUDA
timeout 90 $PY benchmarks/memory_agreement.py --device cuda --classes 1000 10000 100000 1000000 --oom-budget-mib 4096 2>&1 | tail -30
log training the FC baseline on CUDA with the CPU defaults
timeout 60 $PY -m attfc_lite train --device cuda --out "$OUT/fc_cuda" --quiet 2>&1 | tail -12
log a torchvision ResNet-18 at 112x112 on CUDA, one short epoch
timeout 60 $PY -m attfc_lite train --device cuda --backbone resnet18 --image-size 112 --embedding-dim 512 \
  --classes 500 --images-per-identity 8 --epochs 2 --eval-identities 100 --out "$OUT/r18_cuda" --quiet 2>&1 | tail -12
} 2>&1 | tee "$OUT/gpu_check.log"
