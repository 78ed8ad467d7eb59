"""CPU twins of the gpukernels CUDA kernels: ``prange`` loops over rows or tiles.

Each module has the name and the launcher signatures of its CUDA twin in ``gpukernels``
(see docs/BACKENDS.md). Numba's CPU target has no bfloat16 or float16. bfloat16 arrays reach
the kernels as their bits (``uint16`` views, no copy), which :func:`load` widens to float32
and :func:`put` rounds back, once, to nearest even; float16 data is computed in float32 copies
rounded into the caller's buffers at the end.
"""

from types import FunctionType

import numba
import numpy as np
from numba import types
from numba.extending import overload

from gpukernels._dtypes import BFLOAT16, FLOAT16
from gpukernels._scalar import ONE

from ._cache import CACHE, njit
from ._math import bf16_bits, bf16_value
from ._threads import load_pip_tbb

load_pip_tbb()  # before the first parallel launch, when Numba picks its threading layer

# Work (elements touched) below which a kernel runs on the calling thread: waking the pool's
# workers costs ~20 us, more than a small kernel takes, and leaves the cores to the caller's
# other threads (NumPy's BLAS: see _threads.py). PyTorch's CPU kernels use the same grain.
PARALLEL_MIN_WORK = 1 << 15


def parallel_kernel(fn: FunctionType, name: str | None = None, bind: dict | None = None):
    """A ``prange`` kernel compiled twice from one source, as its launch function:
    ``parallel=True`` for large inputs, and serial (``prange`` as ``range``) for small ones.
    Both run the same arithmetic in the same order, so they give the same bits
    (tests/test_cpu_paths.py); they are the launch function's ``parallel`` and ``serial``.

    Use it as the decorator of a kernel, and call it with the launch arguments and
    ``work=`` the number of elements the launch touches. A kernel whose ``prange`` runs over
    chunks of items takes the chunk's size as its last parameter: pass ``items=`` the number
    of items instead, and the call appends it, several chunks per thread in parallel
    (:func:`per_task`) and one chunk of all items serially, where chunks would only add
    set-up per chunk. A kernel whose ``prange`` has few iterations of much work each passes
    ``tasks=`` their number: a single task runs serially, as the pool would only add its
    wake-up (~20 us). A kernel factory builds several
    kernels from one source by passing ``bind``, globals of the source to rebind (e.g. the
    element function of an elementwise loss), and a ``name`` for each.

    A function rather than an object with ``__call__``: calling an instance costs small calls
    a quarter of a microsecond more.
    """
    if bind:
        fn = FunctionType(fn.__code__, {**fn.__globals__, **bind}, fn.__name__)
    name = name or fn.__name__

    def launch(*args, work: int, items: int | None = None, tasks: int | None = None) -> None:
        serial = work < PARALLEL_MIN_WORK or (tasks is not None and tasks < 2)
        kernel = launch.serial if serial else launch.parallel
        if items is None:
            kernel(*args)
        else:
            kernel(*args, max(1, items) if serial else per_task(items))

    launch.__name__ = launch.__qualname__ = name
    launch.parallel = njit(parallel=True, cache=CACHE)(_renamed(fn, name))
    launch.serial = njit(cache=CACHE)(_renamed(fn, f"{name}_serial"))
    return launch


def _renamed(fn: FunctionType, name: str) -> FunctionType:
    """A copy of ``fn`` under ``name``: Numba names its cache files after the qualname, so
    each compilation of one source needs its own."""
    copy = FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__)
    copy.__qualname__ = name
    return copy


def compute_view(x: np.ndarray) -> np.ndarray:
    """``x`` as the kernels read it: bfloat16 as its bits (a ``uint16`` view), float16 as a
    float32 copy, anything else as it is."""
    if x.dtype.itemsize != 2:  # first: without ml_dtypes, BFLOAT16 is None, which == float64
        return x
    return x.view(np.uint16) if x.dtype == BFLOAT16 else x.astype(np.float32)


def output_view(out: np.ndarray | None) -> np.ndarray | None:
    """``out`` as the kernels write it: bfloat16 as its bits (a ``uint16`` view, written
    through :func:`put`), float16 as a float32 stand-in to be rounded into it by
    :func:`store`, anything else (``None``: no output wanted) as it is."""
    if out is None or out.dtype.itemsize != 2:
        return out
    return out.view(np.uint16) if out.dtype == BFLOAT16 else np.empty(out.shape, np.float32)


def store(buffer: np.ndarray | None, out: np.ndarray | None) -> None:
    """Round a float32 stand-in into its float16 ``out``, once, to nearest even (nothing to
    do otherwise, nor for no ``out``). Past float16's range that is +-inf, as IEEE rounding
    has it, without NumPy's overflow warning (the CUDA kernels round the same way,
    silently)."""
    if out is not None and out.dtype.itemsize == 2 and out.dtype == FLOAT16:  # size first
        with np.errstate(over="ignore"):
            out[...] = buffer


def load(a, i):
    """``a[i]`` as a number to compute with: the float32 value of bfloat16 bits (a ``uint16``
    array, see :func:`compute_view`), the element itself otherwise."""
    return bf16_value(a[i]) if holds_bits(a) else a[i]


@overload(load, inline="always")
def _load_overload(a, i):
    if holds_bits_type(a):
        return lambda a, i: bf16_value(a[i])
    return lambda a, i: a[i]


def put(a, i, x):
    """``a[i] = x``, into bfloat16 bits (a ``uint16`` array) rounded once to nearest even."""
    a[i] = bf16_bits(np.float32(x)) if holds_bits(a) else x


@overload(put, inline="always")
def _put_overload(a, i, x):
    if holds_bits_type(a):

        def put_bits(a, i, x):
            a[i] = bf16_bits(x)

        return put_bits

    def put_value(a, i, x):
        a[i] = x

    return put_value


@njit(cache=CACHE, inline="always")
def widen(src, dst):
    """``dst[:] = src`` as numbers (:func:`load`): bfloat16 bits widened to float32."""
    for c in range(dst.shape[0]):
        dst[c] = load(src, c)


def rows_in(a, lo, rows, scratch):
    """Rows ``lo:lo + rows`` of the 2-D ``a`` to compute with, as ``(array, its first row)``:
    ``(a, lo)``, or for bfloat16 bits ``(scratch, 0)`` with the rows widened into it."""
    if not holds_bits(a):
        return a, lo
    for r in range(rows):
        widen(a[lo + r], scratch[r])
    return scratch, 0


@overload(rows_in, inline="always")
def _rows_in_overload(a, lo, rows, scratch):
    if not holds_bits_type(a):
        return lambda a, lo, rows, scratch: (a, lo)

    def widened(a, lo, rows, scratch):
        for r in range(rows):
            widen(a[lo + r], scratch[r])
        return scratch, 0

    return widened


def rows_out(a, lo, scratch):
    """Where the 2-D ``a``'s rows from ``lo`` on are to be written, as ``(array, first row)``:
    ``(a, lo)``, or for bfloat16 bits ``(scratch, 0)``, float32 rows that
    :func:`flush_rows` rounds into ``a``. ``a`` may be ``None`` (no gradient wanted):
    ``(None, lo)``."""
    return (scratch, 0) if holds_bits(a) else (a, lo)


@overload(rows_out, inline="always")
def _rows_out_overload(a, lo, scratch):
    if not holds_bits_type(a):
        return lambda a, lo, scratch: (a, lo)
    return lambda a, lo, scratch: (scratch, 0)


def flush_rows(scratch, a, lo, rows):
    """Round the rows :func:`rows_out` gave into ``a``'s rows ``lo:lo + rows`` when ``a`` is
    bfloat16 bits (nothing to do otherwise: they were written in place, or ``a`` is
    ``None``)."""
    if holds_bits(a):
        for r in range(rows):
            for c in range(a.shape[1]):
                put(a[lo + r], c, scratch[r, c])


@overload(flush_rows, inline="always")
def _flush_rows_overload(scratch, a, lo, rows):
    if not holds_bits_type(a):
        return lambda scratch, a, lo, rows: None

    def rounded(scratch, a, lo, rows):
        for r in range(rows):
            row = a[lo + r]
            for c in range(row.shape[0]):
                put(row, c, scratch[r, c])

    return rounded


def holds_bits(a) -> bool:
    """Whether ``a`` is bfloat16 bits (``uint16``), which :func:`load` and :func:`put` convert;
    a constant of the type in compiled code (``False`` for ``None``)."""
    return a is not None and a.dtype == np.uint16


@overload(holds_bits, inline="always")
def _holds_bits_overload(a):
    bits = holds_bits_type(a)
    return lambda a: bits


def holds_bits_type(a: types.Type) -> bool:
    """:func:`holds_bits` of the Numba type ``a``: an array of ``uint16``."""
    return isinstance(a, types.Array) and a.dtype == types.uint16


def per_task(n: int) -> int:
    """Items per parallel task for ``n`` items: several tasks per thread, for balance.

    Uses the thread count Numba starts with: ``numba.get_num_threads()`` costs microseconds
    per call, which small batches would feel.
    """
    return max(1, -(-n // (8 * numba.config.NUMBA_NUM_THREADS)))


def at(a, i, period=0):
    """``a[i]`` for an array (``a[i % period]`` with a period), ``a`` for a number, 1 for
    ``None``: an optional operand's value at element ``i``, chosen when the kernel compiles.
    Launchers pass a missing weight as ``None`` and a uniform scale as a number, so each case
    compiles to its own loop without a per-element branch, gather or division, and the common
    one vectorises."""
    if a is None:
        return ONE
    if np.ndim(a) == 0:
        return a
    return a[i % period] if period else a[i]


@overload(at)
def _at_overload(a, i, period=0):
    if isinstance(a, types.NoneType):
        return lambda a, i, period=0: ONE
    if isinstance(a, types.Number):
        return lambda a, i, period=0: a
    return lambda a, i, period=0: a[i % period] if period else a[i]


def window(a, lo, hi):
    """``a[lo:hi]`` for an array, ``a`` itself for a number or ``None``: an optional operand
    (as :func:`at` takes it) for the elements ``lo:hi``, to be read with :func:`at` from 0."""
    if a is None or np.ndim(a) == 0:
        return a
    return a[lo:hi]


@overload(window)
def _window_overload(a, lo, hi):
    if isinstance(a, types.NoneType | types.Number):
        return lambda a, lo, hi: a
    return lambda a, lo, hi: a[lo:hi]


def optional(a: np.ndarray):
    """An optional operand as the kernels take it: ``None`` when empty, a number when it has
    one element (a scale shared by every element), the array otherwise."""
    if a.shape[0] == 0:
        return None
    return a[0] if a.shape[0] == 1 else a
