#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200 image: numba, numba-cuda, cupy, torch, triton are
# already there). Installs nothing and reaches no network: runs the GPU tests, then the whole
# GPU benchmark, and leaves the log, JSON and plot under $OUT (else benchmarks/results/).
#   device run:  bash benchmarks/run_gpu.sh            (from the repository root)
#   quick check: bash benchmarks/run_gpu.sh --quick
set -uo pipefail
cd "$(dirname "$0")/.."
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
log="$dest/gpu-run.log"

{
  echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -m gpukernels info
  # the direct launch (gpukernels/cuda/_direct.py) first: if it fails, the rest of the run
  # still tells something, through Numba's launch
  echo "== pytest -m gpu: direct launch against Numba's"
  if ! "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k launches_agree; then
    echo "!! direct launch failed: the rest runs with GPUKERNELS_CUDA_LAUNCH=numba"
    export GPUKERNELS_CUDA_LAUNCH=numba
  fi
  echo "== pytest -m gpu"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
  echo "pytest exit: $?"
  echo "== python -m benchmarks --backend cuda $*"
  "$PY" -m benchmarks --backend cuda --out "$dest" "$@"
  echo "bench exit: $?"
  if [ "${GPUKERNELS_CUDA_LAUNCH:-direct}" = direct ]; then
    echo "== the small calls again through Numba's launch"
    GPUKERNELS_CUDA_LAUNCH=numba "$PY" -m benchmarks --backend cuda --ops overhead,reduce \
      --sizes small --out "$dest/numba-launch" "$@"
    echo "bench exit: $?"
  fi
} 2>&1 | tee "$log"
