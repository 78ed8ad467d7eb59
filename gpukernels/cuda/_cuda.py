"""What the CUDA launchers need to know about Numba, CuPy, streams and the simulator.

This is the one module that knows whether kernels run on a GPU or on Numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``), how a caller's array becomes a kernel argument, which stream a
kernel is launched on, and which launch shapes (threads per block, blocks per grid) the
launchers use. The choice between the shared-memory and the warp-shuffle block reductions is
made in :mod:`gpukernels.cuda.reduce` from :data:`SIMULATOR`.
"""

from __future__ import annotations

import functools
import math
import threading
import types as types_module
import warnings
from dataclasses import dataclass

import numpy as np
from numba import cuda
from numba.core import types
from numba.cuda import libdevice
from numba.np import numpy_support

from .._dtypes import ACCUMULATORS, BFLOAT16, accumulation_dtype
from .._dtypes import STORAGE as STORAGE
from .._env import SIMULATOR as SIMULATOR
from .._env import cuda_launch
from . import _direct

try:
    from numba.cuda.core.errors import NumbaPerformanceWarning as _PerformanceWarning
except ImportError:
    from numba.core.errors import NumbaPerformanceWarning as _PerformanceWarning


@dataclass
class LaunchPolicy:
    """Threads per block and grid caps, chosen once here for every launcher.

    Every tile width must be a power of two dividing ``TILE``; the canonical sums come out the
    same bits for any of them (tests change these fields to check that).
    """

    tile_threads: int  # threads of a block that sums one TILE (reduce, fused bce/mse)
    column_block: tuple[int, int]  # (columns, threads per column) of column_tile_sums
    elementwise_threads: int  # sigmoid kernels, label weights, composite (a thread per row)
    max_blocks: int  # grid cap of grid-stride kernels
    row_elements: int  # softmax: aim for this many elements of a row per thread
    row_threads: tuple[int, int]  # softmax: (fewest, most) threads per row
    row_block: int  # softmax: threads per block when rows are short (several rows a block)
    shared_bytes: int  # dynamic shared memory a block may use without an opt-in


# Simulated threads cost ~5 ms each per launch, so the simulator gets tiny blocks and at most
# two blocks (the grid-stride loops still run); a GPU gets blocks that fill an SM. A softmax row
# gets at most 512 threads so that a block never needs more than 128 registers a thread.
GPU_POLICY = LaunchPolicy(
    tile_threads=128,
    column_block=(32, 8),
    elementwise_threads=256,
    max_blocks=8192,
    row_elements=8,
    row_threads=(4, 512),
    row_block=256,
    shared_bytes=48 * 1024,
)
SIMULATOR_POLICY = LaunchPolicy(
    tile_threads=16,
    column_block=(4, 4),
    elementwise_threads=16,
    max_blocks=2,
    row_elements=32,
    row_threads=(2, 8),
    row_block=8,
    shared_bytes=48 * 1024,
)
POLICY: LaunchPolicy = SIMULATOR_POLICY if SIMULATOR else GPU_POLICY


ACCUMULATOR_TYPES: tuple[types.Float, ...] = tuple(
    numpy_support.from_dtype(d) for d in ACCUMULATORS
)


def accumulator(dtype) -> types.Float:
    """The Numba type kernels for ``dtype`` data compute in (the dtype table's accumulation)."""
    return numpy_support.from_dtype(accumulation_dtype(dtype))


def is_bf16(dtype) -> bool:
    """Whether ``dtype`` is bfloat16 (which kernels see as its 16 bits, ``uint16``)."""
    return BFLOAT16 is not None and np.dtype(dtype) == BFLOAT16


def kernel_type(dtype) -> types.Type:
    """The Numba element type a kernel sees for arrays of ``dtype``: Numba has no bfloat16,
    so bfloat16 arrays arrive as their bits (``uint16``)."""
    return types.uint16 if is_bf16(dtype) else numpy_support.from_dtype(np.dtype(dtype))


def bits(x):
    """``x`` as a kernel takes it: a bfloat16 array as a ``uint16`` view of its memory."""
    return x.view(np.uint16) if is_bf16(x.dtype) else x


def gradient_or_none(grad, input):
    """``grad`` as the kernels take it (:func:`bits`); for ``None`` (the loss alone) the
    ``input``'s first 0 elements or rows, its type, which the kernels read as "write no
    gradient"."""
    return bits(input[:0] if grad is None else grad)


@functools.cache
def element_io(acc, bf16: bool):
    """``(load, store)`` device functions for the elements of a storage array.

    ``load(v)`` is the element's value in ``acc``; ``store(x)`` is what to assign to an
    element for the value ``x``. For bfloat16 (``bf16``: the elements are ``uint16`` bits)
    ``load`` widens the bits to float32 and ``store`` rounds a float32 once to nearest even
    (NaN stays a quiet NaN); otherwise both are plain conversions. The simulator has no
    libdevice, so there the bits move through NumPy instead.
    """
    if not bf16:

        @cuda.jit(device=True)
        def load(v):
            return acc(v)

        @cuda.jit(device=True)
        def store(x):
            return x

        return load, store
    if SIMULATOR:

        def load_sim(v):
            return np.array(np.uint32(v) << np.uint32(16)).view(np.float32)[()]

        def store_sim(x):
            f = np.float32(x)
            if f != f:
                return np.uint16(0x7FC0)
            b = int(np.array(f).view(np.uint32)[()])
            return np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)

        return cuda.jit(device=True)(load_sim), cuda.jit(device=True)(store_sim)

    @cuda.jit(device=True)
    def load_bits(v):
        return libdevice.int_as_float(types.int32(types.uint32(v) << types.uint32(16)))

    @cuda.jit(device=True)
    def store_bits(x):
        f = types.float32(x)
        if f != f:
            return types.uint16(0x7FC0)
        b = types.uint32(libdevice.float_as_int(f))
        rounded = b + types.uint32(0x7FFF) + ((b >> types.uint32(16)) & types.uint32(1))
        return types.uint16(rounded >> types.uint32(16))

    return load_bits, store_bits


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def grid_for(n: int, threads: int) -> int:
    """Blocks for ``n`` work items of ``threads`` each, capped (kernels loop grid-stride)."""
    return max(1, min(-(-n // threads), POLICY.max_blocks))


def row_shape(num_classes: int, itemsize: int) -> tuple[int, int, bool, int]:
    """Softmax launch shape for rows of ``num_classes`` values of ``itemsize`` bytes (acc).

    Returns ``(tx, ry, cache, shared)``: ``tx`` threads per row (a power of two, so rows longer
    than ``tx`` are strided), ``ry`` rows per block, whether the rows are kept in shared memory
    (they are when they fit in ``POLICY.shared_bytes`` beside the reduction scratch; otherwise
    the gradient pass re-reads them) and the dynamic shared bytes to launch with.
    """
    lo, hi = POLICY.row_threads
    tx = min(hi, max(lo, _next_pow2(-(-num_classes // POLICY.row_elements))))
    ry = max(1, POLICY.row_block // tx)
    scratch = ry * tx
    cache = (scratch + ry * num_classes) * itemsize <= POLICY.shared_bytes
    return tx, ry, cache, (scratch + (ry * num_classes if cache else 0)) * itemsize


def tile_grid(num_tiles: int) -> int:
    """Blocks for ``num_tiles`` canonical tiles (a block loops over tiles grid-stride)."""
    return max(1, min(num_tiles, POLICY.max_blocks))


def kernel_arg(x):
    """The caller's array as a kernel argument, sharing its memory (no copy, no sync).

    On a GPU: a Numba view of the ``__cuda_array_interface__`` with ``sync=False``, since
    Numba's default would synchronise the producer's stream on the host at every launch.
    Under the simulator: the NumPy array wrapped as a ``FakeCUDAArray``; a bare NumPy argument
    would be copied in and out, which breaks aliasing (a gradient written over its logits).
    """
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.asarray(x))
    return cuda.from_cuda_array_interface(x.__cuda_array_interface__, owner=x, sync=False)


@functools.lru_cache(maxsize=64)
def _external_stream(ptr: int):
    return cuda.external_stream(ptr)


def launch_stream():
    """CuPy's current stream as a Numba stream (the legacy default stream for pointer 0).

    The simulator has no external streams; it runs every launch at once on stream 0.
    """
    if SIMULATOR:
        return 0
    try:
        import cupy
    except ImportError:  # a non-CuPy __cuda_array_interface__ caller: the default stream
        return cuda.legacy_default_stream()
    ptr = int(cupy.cuda.get_current_stream().ptr)
    # CuPy's null stream (pointer 0) is the legacy default stream; Numba's default_stream()
    # is handle 0, which means the per-thread stream under NUMBA_CUDA_PER_THREAD_DEFAULT_STREAM
    return cuda.legacy_default_stream() if ptr == 0 else _external_stream(ptr)


_TICKETS: dict[tuple[int, int], object] = {}
_PER_THREAD = threading.local()  # the per-thread default stream's counters, by device
_PER_THREAD_STREAM = 2  # cudaStreamPerThread: one handle, a different stream in each thread


def stream_key(cupy) -> tuple[int, int]:
    """CuPy's current stream as a key for data made on it: its handle, and the host thread
    for the per-thread default stream (one handle, a different stream in each thread)."""
    ptr = int(cupy.cuda.get_current_stream().ptr)
    return ptr, threading.get_ident() if ptr == _PER_THREAD_STREAM else 0


def tickets(size: int = 1):
    """The completion counters of the current stream: at least ``size`` zeroed ``int32`` on
    the device.

    A single-launch kernel counts its finished blocks on ``[0]`` (and groups of tiles on the
    rest, :func:`gpukernels.cuda.reduce.group_filled`); the block that draws the last ticket
    of a counter sets it back to 0. Launches on one stream run in order, so one array serves
    every kernel of that stream; another stream gets its own, and so does each host thread
    on the per-thread default stream, whose handle is the same in every thread (kept with
    the thread, so a later thread with a reused id cannot share it). Made on that stream,
    zeroed, and replaced by a longer one (at least twice as long) when a launch needs more.
    """
    if SIMULATOR:
        table, key, xp = _TICKETS, (0, 0), np
    else:
        import cupy

        ptr = int(cupy.cuda.get_current_stream().ptr)
        device = cupy.cuda.runtime.getDevice()
        if ptr == _PER_THREAD_STREAM:
            table = _PER_THREAD.__dict__.setdefault("tickets", {})
            key = (device, ptr)
        else:
            table, key = _TICKETS, (device, ptr)
        xp = cupy
    counters = table.get(key)
    if counters is None or counters.shape[0] < size:
        grown = max(size, 64, 0 if counters is None else 2 * counters.shape[0])
        counters = table[key] = xp.zeros(grown, np.int32)
    return counters


def scratch(shape, dtype):
    """Uninitialised device memory for a launcher's partial results (CuPy's pool on a GPU,
    NumPy under the simulator), on the current stream."""
    if SIMULATOR:
        return np.empty(shape, dtype)
    import cupy

    return cupy.empty(shape, dtype)


def launch(kernel, grid, block, shared: int, *args) -> None:
    """Launch ``kernel[grid, block]`` with ``shared`` bytes of dynamic shared memory on the
    current stream. On a GPU the parameters are packed by :mod:`._direct` (unless
    ``GPUKERNELS_CUDA_LAUNCH=numba``, or where numba-cuda cannot load the kernel for it);
    otherwise Numba launches it, with the arrays as Numba views and the scalars as they are."""
    if (
        not SIMULATOR
        and cuda_launch() == "direct"
        and _direct.launch(kernel, grid, block, shared, args)
    ):
        return
    converted = [
        kernel_arg(a) if hasattr(a, "__cuda_array_interface__") or isinstance(a, np.ndarray) else a
        for a in args
    ]
    if SIMULATOR or _blocks(grid) >= 128:
        kernel[grid, block, launch_stream(), shared](*converted)
        return
    # Numba warns at every launch of fewer than 128 blocks; a small batch is no user error.
    # Only small grids pay for catch_warnings (and its global filter swap).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _PerformanceWarning)
        configured = kernel[grid, block, launch_stream(), shared]
    configured(*converted)


def _blocks(grid) -> int:
    return math.prod(grid) if isinstance(grid, tuple) else grid


def acc_constant(acc: types.Float, value: float):
    """A NumPy scalar of ``acc``'s type: a typed constant for kernels built for ``acc``."""
    return np.float64(value) if acc == types.float64 else np.float32(value)


@functools.cache
def scalar_device(fn, acc: types.Float):
    """A ``gpukernels._scalar`` function as a device function whose constants are ``acc``.

    ``_scalar`` writes its constants as float32 so that Numba keeps float32 maths float32.
    In the simulator the maths is NumPy's, where float32 constant + Python float (what
    ``math.exp`` returns) is float32: float64 kernels would silently lose precision there.
    Rebinding the constants to ``acc`` changes nothing for a compiled float64 kernel.
    """
    constants = {
        name: acc_constant(acc, float(value))
        for name, value in fn.__globals__.items()
        if isinstance(value, np.float32)
    }
    rebound = types_module.FunctionType(fn.__code__, {**fn.__globals__, **constants}, fn.__name__)
    return cuda.jit(device=True)(rebound)
