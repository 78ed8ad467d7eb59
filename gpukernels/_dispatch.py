"""Where a call runs, chosen from the arrays' library and ``GPUKERNELS_BACKEND``.

NumPy arrays run the ``cpu_fallback`` kernels and CUDA arrays (CuPy, or anything with
``__cuda_array_interface__``) the CUDA kernels of ``gpukernels``. ``GPUKERNELS_BACKEND=cuda``
with ``NUMBA_ENABLE_CUDASIM=1`` runs NumPy arrays through the CUDA kernels on Numba's
simulator (how CI tests them). CuPy and ``numba.cuda`` are imported only when first needed.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np

from . import _tensors, _validate
from ._dtypes import accumulation_dtype as accumulation_dtype
from ._env import ENV_BACKEND, SIMULATOR, forced_backend
from ._ops import OPS


@functools.cache
def cuda_available() -> bool:
    """True when a real CUDA GPU is usable through Numba (cached after the first call)."""
    if SIMULATOR:
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def backend_of(library: str) -> str:
    """The backend (``"cpu"`` or ``"cuda"``) for arrays of ``library`` under the env setting."""
    choice = forced_backend()
    if library == "cuda":
        if choice == "cpu":
            raise TypeError(
                f"{ENV_BACKEND}=cpu cannot run CUDA arrays without copying them to the host"
            )
        return "cuda"
    if choice == "cuda":
        if not SIMULATOR:
            raise TypeError(
                f"{ENV_BACKEND}=cuda runs NumPy arrays only on Numba's simulator "
                "(NUMBA_ENABLE_CUDASIM=1); pass CuPy arrays to run on the GPU"
            )
        return "cuda"
    return "cpu"


def backend(x) -> str:
    """Where ``x`` would run: ``"cuda"`` or ``"cpu"`` (a PyTorch tensor: by its device)."""
    if _tensors.is_tensor(x):
        return backend_of(_tensors.device_kind(x, "x"))
    return backend_of(_validate.array_library("x", x))


@functools.cache
def array_module(library: str) -> ModuleType:
    """NumPy for NumPy arrays, CuPy for CUDA arrays (imported on first use)."""
    if library == "numpy":
        return np
    return importlib.import_module("cupy")


@functools.cache
def kernels(backend_name: str, op: str) -> ModuleType:
    """The launcher module of ``op`` (a name in the op table) on ``backend_name``."""
    return OPS[op].module(backend_name)


class ArrayArguments:
    """The array arguments of one public function, declared once beside it.

    ``required`` then ``optional`` name them in the order the function passes their values to
    :meth:`call`. Optional ones may be ``None`` (``out`` among them, which must also be
    writable); those in ``numbers`` may also be plain real numbers. ``out`` may be one of
    ``in_place`` itself but may not otherwise share memory with an argument. Declaring them
    once keeps a call's own cost to a pass over its values (small calls feel each
    microsecond).
    """

    __slots__ = ("names", "optional", "numbers", "in_place", "out_index")

    def __init__(
        self,
        *required: str,
        optional: tuple[str, ...] = (),
        numbers: tuple[str, ...] = (),
        in_place: tuple[str, ...] = (),
    ):
        self.names = required + optional
        self.optional, self.numbers, self.in_place = optional, numbers, in_place
        self.out_index = self.names.index("out") if "out" in optional else None

    def call(self, *values) -> Call:
        """The call with these values, one per name: checked, and on its backend."""
        return Call(self, values)


class Call:
    """One public call: its backend, its array module and its arrays in that module
    (``arrays``: a tuple in the order of the :class:`ArrayArguments` names).

    CUDA arrays that are not CuPy arrays are adopted with ``cupy.asarray`` (zero-copy), so
    results come back as CuPy arrays on the same device.
    """

    __slots__ = ("library", "backend", "xp", "arrays")

    def __init__(self, arguments: ArrayArguments, values: tuple):
        names = arguments.names
        self.library = _validate.common_library(
            names, values, arguments.optional, arguments.numbers
        )
        self.backend = backend_of(self.library)
        try:
            self.xp = array_module(self.library)
        except ImportError as error:
            cuda = ", ".join(
                name
                for name, x in zip(names, values, strict=True)
                if hasattr(x, "__cuda_array_interface__")
            )
            raise TypeError(
                f"{cuda}: CUDA arrays (__cuda_array_interface__) need CuPy, which cannot be "
                f"imported ({error}); install CuPy, or pass NumPy arrays"
            ) from error
        if self.xp is not np:
            values = tuple([_adopt(self.xp, k, v) for k, v in zip(names, values, strict=True)])
        index = arguments.out_index
        if index is not None and values[index] is not None:
            _validate.out_overlap(
                values[index], dict(zip(names, values, strict=True)), arguments.in_place
            )
        self.arrays = values

    def ops(self, op: str) -> ModuleType:
        """The launcher module of ``op`` on this call's backend."""
        return kernels(self.backend, op)


def _adopt(cupy, name: str, x):
    """CUDA arrays as CuPy arrays (zero-copy); ``None`` and plain numbers as they are. An
    array on another device than the current one is a ``ValueError``: CuPy would adopt it as
    a copy on the current device, where the kernels run, and writes would miss it."""
    if x is None or _validate.is_number(x):
        return x
    adopted = cupy.asarray(x)
    if adopted is not x:
        _validate.not_copied(name, x, adopted, cupy)
    return adopted
