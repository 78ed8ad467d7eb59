#!/usr/bin/env bash
# The GPU tests and benchmark on a lent GPU machine (H100/H200 image: numba, numba-cuda, cupy,
# torch, triton are already there). Reaches no network and installs only carried wheels;
# leaves the log, JSON and plot under $OUT (else benchmarks/results/).
#   bash benchmarks/run_gpu.sh tests            the checks below, then pytest -m gpu
#   bash benchmarks/run_gpu.sh bench [ARGS]     the checks, then the GPU benchmark (ARGS:
#                                               python -m benchmarks's, e.g. --quick, --ops X)
#   bash benchmarks/run_gpu.sh all [ARGS]       both, in one command
# Where the tree travels without its history (no .git), GPUKERNELS_COMMIT=<hash> names the
# commit for the log and the results file.
# One device command may run 10 minutes: `tests` and `bench` are two calls, made one right
# after the other so that the machine is still warm (what /tmp holds is kept then).
#
# The checks, at the start of every stage:
# - numba-cuda 0.30.4 and older register np.row_stack, which NumPy 2.5 removed: beside NumPy
#   2.5 (the image lists 2.5.2) they compile no kernel. Where a trivial kernel does not
#   compile, a NumPy below 2.5 carried in .whl/numpy/ is put first on the path.
# - the direct launch (gpukernels/cuda/_direct.py) against this image's numba-cuda: its
#   parameters against the PTX, its host side, its bits against Numba's launch on the GPU.
#   If any fails, everything runs through Numba's launch (the verdict is kept in /tmp, for
#   the same _direct.py). A stage exits non-zero where a check, the tests or a benchmark
#   failed; `all` runs the benchmark also after failed tests.
# Wheels in .whl/ (ignored by git; the device call names it in `carry`) go to /tmp/site:
# Liger-Kernel's for the CE comparison (pip download --no-deps liger-kernel; it needs only
# torch and triton). QuACK cannot travel: its nvidia-cutlass-dsl-libs-cu13 wheel alone is
# 92 MB, over the 64 MiB a call carries.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
usage="usage: $0 [tests|bench|all] [benchmark arguments]"
case $stage in
  tests | bench | all) shift ;;
  -h | --help) echo "$usage"; exit 0 ;;
  -*) stage=all ;;  # the earlier form: benchmark arguments only
  *) echo "$usage" >&2; exit 2 ;;
esac
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
pip_target() {  # pip_target DIR WHEEL...: install the wheels into DIR, offline
  local dir=$1
  shift
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$dir" "$@"
}
if compgen -G ".whl/*.whl" >/dev/null && pip_target /tmp/site .whl/*.whl; then
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
log="$dest/gpu-run-$stage.log"
# "direct" or "numba", from the first stage on this machine with this _direct.py
verdict=/tmp/gpukernels-launch-$(cksum <gpukernels/cuda/_direct.py | cut -d" " -f1)

compiles() {  # whether numba-cuda compiles a trivial kernel to PTX here
  "$PY" - <<'EOF'
import numpy, numba
from numba import cuda

def step(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] += 1

try:
    cuda.compile_ptx(step, "void(float32[:])", cc=(9, 0))
except Exception as error:
    print(f"!! numba-cuda compiles no kernel beside NumPy {numpy.__version__}: {error!r}")
    raise SystemExit(1)
print(f"numba {numba.__version__} compiles kernels beside NumPy {numpy.__version__}")
EOF
}

checks() {  # fails where no kernel compiles: then nothing else can run
  local commit
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${GPUKERNELS_COMMIT:-unknown}")
  echo "== $(date -u +%FT%TZ) commit $commit"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  if ! compiles; then
    compgen -G ".whl/numpy/*.whl" >/dev/null || return 1
    echo "== NumPy from .whl/numpy/ first on the path"
    pip_target /tmp/numpy .whl/numpy/*.whl && export PYTHONPATH="/tmp/numpy:$PYTHONPATH"
    compiles || return 1
  fi
  "$PY" -m pip list 2>/dev/null |
    grep -iE "^(numpy|numba|numba-cuda|cuda-core|cupy[-a-z0-9]*|torch|jax|triton|liger[-_]kernel) "
  "$PY" -m gpukernels info
  if [ ! -s "$verdict" ]; then
    echo "== direct launch checks"
    if "$PY" -m pytest -q -p no:cacheprovider tests/test_direct_launch.py tests/test_ptx.py \
         -k "direct" &&
       "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k launches_agree
    then
      echo direct >"$verdict"
    else
      echo "!! direct launch failed: everything runs with GPUKERNELS_CUDA_LAUNCH=numba"
      echo numba >"$verdict"
    fi
  fi
  launch=$(cat "$verdict")
  export GPUKERNELS_CUDA_LAUNCH=$launch
  echo "== launch: $launch"
}

tests() {
  local skip=() rc
  [ "$launch" = numba ] && skip=(-k "not launches_agree")
  echo "== pytest -m gpu"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider "${skip[@]}" tests
  rc=$?
  echo "pytest exit: $rc"
  return $rc
}

bench() {
  local rc again=0
  echo "== python -m benchmarks --backend cuda $*"
  "$PY" -m benchmarks --backend cuda --out "$dest" "$@"
  rc=$?
  echo "bench exit: $rc"
  if [ "$launch" = direct ]; then
    # the caller's arguments (--quick, --dtypes) first: argparse keeps an option's last
    # value, so these --ops, --sizes and --out replace the caller's
    echo "== the small calls again through Numba's launch"
    GPUKERNELS_CUDA_LAUNCH=numba "$PY" -m benchmarks --backend cuda "$@" --ops overhead,reduce \
      --sizes small --out "$dest/numba-launch"
    again=$?
    echo "bench exit: $again"
  fi
  return $((rc || again))
}

run_stage() {
  checks || return
  case $stage in
    tests) tests ;;
    bench) bench "$@" ;;
    all)
      tests
      local failed=$?
      bench "$@" && return $failed
      ;;
  esac
}

run_stage "$@" 2>&1 | tee "$log"  # the script's status: the stage's (pipefail)
