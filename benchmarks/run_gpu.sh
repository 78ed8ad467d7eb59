#!/usr/bin/env bash
# One call on a lent GPU machine (H100/H200 image: numba, numba-cuda, cupy, torch, triton are
# already there). Reaches no network and installs only carried wheels: runs the GPU tests,
# then the whole GPU benchmark, and leaves the log, JSON and plot under $OUT (else
# benchmarks/results/).
#   device run:  bash benchmarks/run_gpu.sh            (from the repository root)
#   quick check: bash benchmarks/run_gpu.sh --quick
# Wheels in .whl/ (ignored by git; the device call names it in `carry`) are installed into
# /tmp/site first: Liger-Kernel's for the CE comparison (pip download --no-deps liger-kernel;
# it needs only torch and triton). QuACK cannot travel: its nvidia-cutlass-dsl-libs-cu13
# wheel alone is 92 MB, over the 64 MiB a call carries.
set -uo pipefail
cd "$(dirname "$0")/.."
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
log="$dest/gpu-run.log"

{
  echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -m gpukernels info
  # the direct launch (gpukernels/cuda/_direct.py) first, with this image's numba-cuda: its
  # parameters against the PTX, its host side, then its bits against Numba's launch on the
  # GPU. If any fails, the rest of the run goes through Numba's launch.
  echo "== direct launch checks"
  skip=()
  if ! { "$PY" -m pytest -q -p no:cacheprovider tests/test_direct_launch.py \
           tests/test_ptx.py -k "direct" &&
         "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k launches_agree; }
  then
    echo "!! direct launch failed: the rest runs with GPUKERNELS_CUDA_LAUNCH=numba"
    export GPUKERNELS_CUDA_LAUNCH=numba
    skip=(-k "not launches_agree")
  fi
  echo "== pytest -m gpu"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider "${skip[@]}" tests
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
