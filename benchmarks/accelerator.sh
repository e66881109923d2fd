#!/usr/bin/env bash
# One accelerator run (issue 16): products, top-20 eigenpairs and a LIB basis on CUDA, in under
# 5 minutes, results written beside the CPU ones (benchmarks/results/accelerator_cuda.{json,md}).
# The benchmark code is device-agnostic; this script only picks the device and bounds the time.
#
#   bash benchmarks/accelerator.sh            # on a machine with a CUDA device
#   DEVICE=cpu bash benchmarks/accelerator.sh # the same run on the CPU (slow; for comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = "cuda" ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
timeout 300 python benchmarks/bench_accelerator.py --device "$DEVICE" --repeat 5
echo "results: benchmarks/results/accelerator_${DEVICE}.md"
