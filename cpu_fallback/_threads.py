"""Numba's thread pool for the parallel kernels: TBB, also where pip installed it.

Numba picks its threading layer at the first parallel launch, TBB first, then GNU OpenMP. A
TBB installed by pip (the ``tbb`` wheel, a dependency on x86-64 Linux) lies in the
environment's ``lib/`` directory, which the dynamic loader does not search, so Numba would
fall back to OpenMP. libgomp's idle workers spin for milliseconds after each kernel, and
OpenBLAS's idle threads spin too: between NumPy's matrix products and our kernels the two
pools starve each other. On 2 cores a 256 x 256 float32 matmul followed by a parallel 2^20
``batch_sum`` took 8.4 ms on OpenMP and 0.25 ms on TBB; a 512 x 128 x 8192
``linear_cross_entropy`` 29-39 ms against 25 ms. TBB's workers sleep soon after their work.

Loading that ``libtbb.so.12`` by its path first lets Numba find it by its name (the loader
matches a loaded library's name). Nothing else changes: no environment variable is set, and
nothing is loaded when ``NUMBA_THREADING_LAYER`` names another layer. A process that started
Numba's pool before importing this package keeps the pool it has.
"""

import ctypes
import importlib.metadata
import sys

import numba

_LIBRARY = "libtbb.so.12"  # the name Numba loads (Linux)
_NOT_TBB = ("omp", "workqueue", "forksafe")  # NUMBA_THREADING_LAYER values that exclude TBB


def load_pip_tbb() -> bool:
    """Load the ``tbb`` wheel's library, if installed, on Linux, and if Numba may pick TBB;
    whether it was loaded."""
    if not sys.platform.startswith("linux") or numba.config.THREADING_LAYER in _NOT_TBB:
        return False
    try:
        files = importlib.metadata.files("tbb") or ()
    except importlib.metadata.PackageNotFoundError:
        return False
    for file in files:
        if file.name == _LIBRARY:
            try:
                ctypes.CDLL(str(file.locate()))
            except OSError:
                return False
            return True
    return False
