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
from types import SimpleNamespace

import numba
import numpy as np
import pytest
from numba.core import types
from numba.np import numpy_support

from gpukernels._dtypes import STORAGE
from gpukernels._ops import OPS
from gpukernels.cuda import _direct
from gpukernels.cuda._cuda import kernel_type

ROOT = Path(__file__).resolve().parents[1]
MODULES = tuple(OPS)
CUDA_SOURCES = sorted((ROOT / "gpukernels" / "cuda").glob("*.py"))

# Device functions ask the current GPU for its compute capability when they are first typed
# (numba-cuda's dispatcher.compile_device); with no GPU that raises, so the runner answers
# with the target of compile_ptx instead.
_RUNNER = r"""
import importlib, json, re, sys, types
from numba import cuda
from numba.core import types as nbtypes
from numba.cuda.descriptor import cuda_target
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


def entry_params(ptx):
    # the PTX type of each parameter of the kernel's entry, in order
    head = ptx[ptx.index(".entry") :]
    return re.findall(r"\.param\s+\.(\w+)", head[: head.index(")")])


results = []
for name in sys.argv[1:]:
    module = importlib.import_module("gpukernels.cuda." + name)
    for kernel, sig in module.ptx_signatures():
        entry = {"module": name, "kernel": kernel.py_func.__name__, "signature": str(sig)}
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            entry["ok"] = ".entry" in ptx
            entry["error"] = "" if entry["ok"] else "no .entry in the PTX"
            # every signature: ptxas costs little beside the compilation (about 1 s in all)
            entry["registers"] = registers(ptx)
            entry["float64_ops"] = float64_ops(ptx)
            entry["params"] = entry_params(ptx)
        except Exception as exc:
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        results.append(entry)
models = cuda_target.target_context.data_model_manager
fields = list(models.lookup(nbtypes.Array(nbtypes.float32, 1, "C"))._fields)
print("PTX-RESULTS " + json.dumps({"results": results, "array_fields": fields}))
"""


@pytest.fixture(scope="module")
def ptx_run():
    """One compilation run of every module's signatures: ``results`` (a dict per signature)
    and ``array_fields`` (the CUDA data model's fields of an array, in order)."""
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


@pytest.fixture(scope="module")
def compiled(ptx_run):
    """A result dict per signature, in each module's ``ptx_signatures()`` order."""
    return ptx_run["results"]


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


# ------------------------------------------------ the direct launch's parameters (_direct)


class _CupyStandIn:
    """A CuPy array as ``gpukernels.cuda._direct`` reads one (CI has no CuPy): a NumPy array's
    dtype, rank, flags, size, item size, extents and strides, with ``data.ptr``."""

    def __init__(self, array: np.ndarray):
        self.dtype, self.ndim, self.flags = array.dtype, array.ndim, array.flags
        self.size, self.itemsize = array.size, array.itemsize
        self.shape, self.strides = array.shape, array.strides
        self.data = SimpleNamespace(ptr=array.ctypes.data)


def _argument(t: types.Type):
    """A launch argument of the Numba type ``t``: a Python or NumPy number, or a stand-in
    CuPy array of ``t``'s dtype, rank and layout (``A``: every other element of a row)."""
    if not isinstance(t, types.Array):
        python = {types.int64: 3, types.float64: 0.5, types.boolean: True}
        return python[t] if t in python else numpy_support.as_dtype(t).type(1)
    shape = (5, 7, 3)[: t.ndim]
    if t.layout == "A":
        wide = np.zeros((*shape[:-1], 2 * shape[-1]), numpy_support.as_dtype(t.dtype))
        return _CupyStandIn(wide[..., ::2])
    array = np.zeros(shape, numpy_support.as_dtype(t.dtype), order=t.layout)
    return _CupyStandIn(array)


def _signatures():
    """``(module, kernel, signature)`` of every launch, in the PTX runner's order."""
    for name in MODULES:
        for kernel, sig in OPS[name].module("cuda").ptx_signatures():
            yield name, kernel, tuple(sig)


def test_direct_launch_types_every_signature():
    """The type the direct launch compiles each argument for is the one listed, and its key
    (dtype, rank, contiguity; a number's type) never stands for two signatures."""
    signature_of = {}
    for name, _kernel, sig in _signatures():
        args = [_argument(t) for t in sig]
        assert tuple(_direct.argument_type(a) for a in args) == sig, f"{name}: {sig}"
        key, _ = _direct.parameters(args)
        assert signature_of.setdefault(key, sig) == sig, f"{name}: {key} is two signatures"


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 3), np.float32),
        np.zeros((4, 3), np.float64, order="F"),
        np.zeros((4, 6), np.uint16)[:, ::2],
        np.zeros((1, 5), np.int64),
        np.zeros((5, 1), np.float32)[::2],
        np.zeros((0, 3), np.float16),
        np.zeros(7, np.int32)[::3],
    ],
    ids=["C", "F", "A", "row", "column-strided", "empty", "1d-strided"],
)
def test_direct_launch_types_arrays_as_numba_does(array):
    """An array's type (dtype, rank, layout) is the one Numba's own typing gives it."""
    assert _direct.argument_type(_CupyStandIn(array)) == numba.typeof(array)


def _fits(value, ptx_type: str) -> bool:
    """Whether a packed parameter ``value`` fills the PTX parameter ``ptx_type``: a Python
    int as 64 bits, a bool as one byte (``_direct.fits``: recent cuda.core packs it so), a
    float as f64, a NumPy number as its own type and width."""
    kind, bits = ptx_type[0], int(ptx_type[1:])
    if isinstance(value, bool | np.bool_):
        return kind in "usb" and bits == 8
    if isinstance(value, int):
        return kind in "usb" and bits == 64
    if isinstance(value, float) and not isinstance(value, np.floating):
        return ptx_type == "f64"
    dtype = np.dtype(type(value))
    return bits == 8 * dtype.itemsize and kind in ("f" if dtype.kind == "f" else "usb")


def test_direct_launch_parameters_match_the_ptx_entry(compiled):
    """For every signature, the parameters the direct launch packs have the number, order
    and widths of the kernel's PTX entry parameters."""
    listed = list(_signatures())
    assert len(listed) == len(compiled)
    for (name, kernel, sig), r in zip(listed, compiled, strict=True):
        assert (r["module"], r["kernel"]) == (name, kernel.py_func.__name__)
        if not r["ok"]:
            continue  # test_every_signature_compiles reports it
        _, params = _direct.parameters([_argument(t) for t in sig])
        where = f"{name}.{r['kernel']}{r['signature']}"
        assert len(params) == len(r["params"]), f"{where}: {len(params)} != {r['params']}"
        pairs = enumerate(zip(params, r["params"], strict=True))
        wrong = [(i, v, p) for i, (v, p) in pairs if not _fits(v, p)]
        assert not wrong, f"{where}: parameters (index, packed, PTX) {wrong}"


def test_direct_launch_packs_arrays_in_the_data_models_order(ptx_run):
    """An array's parameters follow the fields of Numba's CUDA array model, by name."""
    assert tuple(ptx_run["array_fields"]) == _direct.ARRAY_FIELDS
    a = _argument(types.Array(types.float32, 2, "A"))
    fields = {
        "meminfo": [0],
        "parent": [0],
        "nitems": [35],
        "itemsize": [4],
        "data": [a.data.ptr],
        "shape": [5, 7],
        "strides": [56, 8],
    }
    expected = [v for name in ptx_run["array_fields"] for v in fields[name]]
    assert _direct.parameters([a, 2.0, 7])[1] == [*expected, 2.0, 7]
