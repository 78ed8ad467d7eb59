"""Every CUDA kernel compiles to PTX for compute capability 9.0, for every signature it is
launched with (each module's ``ptx_signatures()``), with no GPU present.

The test process runs on Numba's simulator (conftest sets ``NUMBA_ENABLE_CUDASIM=1`` before
Numba is imported), where there is no compiler; so one subprocess with the simulator off
imports the kernel modules and compiles them all. A kernel that fails to type fails here.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpukernels._dtypes import STORAGE
from gpukernels._ops import OPS
from gpukernels.cuda._cuda import kernel_type

ROOT = Path(__file__).resolve().parents[1]
MODULES = tuple(OPS)
CUDA_SOURCES = sorted((ROOT / "gpukernels" / "cuda").glob("*.py"))

# Device functions ask the current GPU for its compute capability when they are first typed
# (numba-cuda's dispatcher.compile_device); with no GPU that raises, so the runner answers
# with the target of compile_ptx instead.
_RUNNER = r"""
import importlib, json, sys, types
from numba import cuda
import numba.cuda.dispatcher as dispatcher

if hasattr(dispatcher, "get_current_device"):
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

try:
    from cuda.bindings import nvjitlink
except ImportError:
    nvjitlink = None


def registers(ptx):
    # registers a thread of the kernel uses on sm_90 (ptxas via nvJitLink), or None
    if nvjitlink is None:
        return None
    data = ptx.encode()
    handle = nvjitlink.create(2, ["-arch=sm_90", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel")
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    for line in log.decode(errors="replace").splitlines():
        if "Used" in line and "registers" in line:
            return int(line.split("Used")[1].split()[0])
    return None


def float64_ops(ptx):
    # double-precision instructions, apart from narrowing a float64 scalar argument
    ops = set()
    for line in ptx.splitlines():
        words = line.split()
        if words and words[0].startswith("@"):  # a predicated instruction: @%p1 add.f64 ...
            words = words[1:]
        if words and ".f64" in words[0] and words[0] not in ("ld.param.f64", "cvt.rn.f32.f64"):
            ops.add(words[0])
    return sorted(ops)


results = []
for name in sys.argv[1:]:
    module = importlib.import_module("gpukernels.cuda." + name)
    for kernel, sig in module.ptx_signatures():
        entry = {"module": name, "kernel": kernel.py_func.__name__, "signature": str(sig)}
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            entry["ok"] = ".entry" in ptx
            entry["error"] = "" if entry["ok"] else "no .entry in the PTX"
            # float64 kernels use the most registers; ptxas on the rest costs time for nothing
            entry["registers"] = registers(ptx) if "float64" in str(sig) else None
            entry["float64_ops"] = float64_ops(ptx)
        except Exception as exc:
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        results.append(entry)
print("PTX-RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def compiled():
    """One compilation run of every module's signatures: a list of result dicts."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, *MODULES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PTX-RESULTS ")]
    assert proc.returncode == 0 and lines, f"PTX runner failed:\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("PTX-RESULTS "))


def _kernel_names(path: Path) -> set[str]:
    """Names of the functions decorated ``@cuda.jit`` (not ``device=True``) in a source file."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            target = call.func if call else dec
            if not (isinstance(target, ast.Attribute) and target.attr == "jit"):
                continue
            device = call and any(
                k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value
                for k in call.keywords
            )
            if not device:
                names.add(node.name)
    return names


def test_every_signature_compiles(compiled):
    failures = [f"{r['module']}.{r['kernel']}{r['signature']}: {r['error']}" for r in compiled]
    failures = [f for r, f in zip(compiled, failures, strict=True) if not r["ok"]]
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("path", CUDA_SOURCES, ids=lambda p: p.name)
def test_every_kernel_is_listed(compiled, path):
    """A kernel added to any CUDA source without a PTX signature in its op's
    ``ptx_signatures()`` (or an op missing from the op table) would escape the test above."""
    listed = {r["kernel"] for r in compiled}
    missing = _kernel_names(path) - listed
    assert not missing, f"gpukernels/cuda/{path.name}: kernels without PTX signatures: {missing}"


def test_kernels_were_found():
    assert sum(len(_kernel_names(path)) for path in CUDA_SOURCES) >= len(OPS)


@pytest.mark.parametrize("module", MODULES)
def test_every_storage_dtype_is_compiled(compiled, module):
    sigs = " ".join(r["signature"] for r in compiled if r["module"] == module)
    for dtype in STORAGE:
        element = kernel_type(dtype)  # bfloat16 arrays reach kernels as uint16 bits
        assert f"Array({element}," in sigs, f"{module}: no signature with {dtype} arrays"


def test_no_double_precision_below_float64(compiled):
    """Kernels on float32, float16 and bfloat16 arrays compute in float32: a float64 literal
    or a promotion slipped into one would run double-precision arithmetic on the GPU (slower,
    and different results), which the simulator cannot show."""
    promoted = [
        f"{r['module']}.{r['kernel']}{r['signature']}: {r['float64_ops']}"
        for r in compiled
        if r["ok"] and "Array(float64" not in r["signature"] and r["float64_ops"]
    ]
    assert not promoted, "float64 instructions in PTX:\n" + "\n".join(promoted)


def test_float64_kernels_are_double(compiled):
    """The check above can see double precision: float64 kernels have it."""
    assert all(r["float64_ops"] for r in compiled if r["ok"] and "Array(float64" in r["signature"])


def test_registers_fit_the_largest_block(compiled):
    """A block of the largest size the GPU policy launches a kernel with must not run out of
    registers (64K a block)."""
    from gpukernels.cuda._cuda import GPU_POLICY as p

    column_threads = p.column_block[0] * p.column_block[1]  # the column sums' blocks
    other_threads = max(p.tile_threads, p.elementwise_threads, p.row_block, p.row_threads[1])
    counted = [r for r in compiled if r.get("registers") is not None]
    if not counted:
        pytest.skip("nvJitLink is not installed: no register counts")
    too_many = []
    for r in counted:
        threads = column_threads if r["kernel"] == "_column_totals_kernel" else other_threads
        # registers are allocated per thread in multiples of 8
        if -(-r["registers"] // 8) * 8 * threads > 65536:
            too_many.append(
                f"{r['module']}.{r['kernel']}{r['signature']}: {r['registers']} registers, "
                f"blocks of {threads} threads"
            )
    assert not too_many, "blocks that would not launch:\n" + "\n".join(too_many)
