"""Where a call runs, chosen from the arrays' library and ``GPUKERNELS_BACKEND``.

NumPy arrays run the ``cpu_fallback`` kernels and CUDA arrays (CuPy, or anything with
``__cuda_array_interface__``) the CUDA kernels of ``gpukernels``. ``GPUKERNELS_BACKEND=cuda``
with ``NUMBA_ENABLE_CUDASIM=1`` runs NumPy arrays through the CUDA kernels on Numba's
simulator (how CI tests them). CuPy and ``numba.cuda`` are imported only when first needed.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import numpy as np

from . import _validate

ENV_BACKEND = "GPUKERNELS_BACKEND"
_CHOICES = ("auto", "cpu", "cuda")


def _simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@functools.cache
def cuda_available() -> bool:
    """True when a real CUDA GPU is usable through Numba (cached after the first call)."""
    if _simulator():
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def _forced() -> str:
    choice = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_BACKEND} must be one of auto, cpu, cuda; got {choice!r}")
    return choice


def backend_of(library: str) -> str:
    """The backend (``"cpu"`` or ``"cuda"``) for arrays of ``library`` under the env setting."""
    choice = _forced()
    if library == "cuda":
        if choice == "cpu":
            raise TypeError(
                f"{ENV_BACKEND}=cpu cannot run CUDA arrays without copying them to the host"
            )
        return "cuda"
    if choice == "cuda":
        if not _simulator():
            raise TypeError(
                f"{ENV_BACKEND}=cuda runs NumPy arrays only on Numba's simulator "
                "(NUMBA_ENABLE_CUDASIM=1); pass CuPy arrays to run on the GPU"
            )
        return "cuda"
    return "cpu"


def backend(x) -> str:
    """Where ``x`` would run: ``"cuda"`` or ``"cpu"``."""
    return backend_of(_validate.array_library("x", x))


@functools.cache
def array_module(library: str) -> ModuleType:
    """NumPy for NumPy arrays, CuPy for CUDA arrays (imported on first use)."""
    if library == "numpy":
        return np
    return importlib.import_module("cupy")


@functools.cache
def kernels(backend_name: str, op: str) -> ModuleType:
    """The launcher module of ``op``: ``cpu_fallback.<op>`` or ``gpukernels.cuda.<op>``."""
    package = "cpu_fallback" if backend_name == "cpu" else "gpukernels.cuda"
    return importlib.import_module(f"{package}.{op}")


class Call:
    """One public call: its backend, its array module and its arrays in that module.

    CUDA arrays that are not CuPy arrays are adopted with ``cupy.asarray`` (zero-copy), so
    results come back as CuPy arrays on the same device.
    """

    __slots__ = ("library", "backend", "xp", "arrays")

    def __init__(self, **arrays):
        self.library = _validate.common_library(arrays)
        self.backend = backend_of(self.library)
        self.xp = array_module(self.library)
        if self.xp is not np:
            arrays = {k: _adopt(self.xp, v) for k, v in arrays.items()}
        self.arrays = arrays

    def ops(self, op: str) -> ModuleType:
        """The launcher module of ``op`` on this call's backend."""
        return kernels(self.backend, op)


def _adopt(cupy, x):
    """CUDA arrays as CuPy arrays (zero-copy); ``None`` and plain numbers as they are."""
    return x if x is None or isinstance(x, int | float | np.number) else cupy.asarray(x)


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64 data, float32 otherwise (float16 is computed in float32)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
