"""CUDA launches through ``cuda.core`` with the kernel parameters packed here.

Numba's launch types every argument, wraps each CUDA array in a ``DeviceNDArray`` (from its
``__cuda_array_interface__``, a dictionary built per array) and unpacks that again into
kernel parameters: host time per array that a fused loss, a dozen arrays in up to three
launches, pays on every call (numba-cuda issue #477). The launchers pass CuPy arrays and
Python numbers only, so a kernel's signature follows from each array's dtype, rank and
layout and each number's type. Numba still compiles the kernel (once per signature,
``Dispatcher.compile``) and loads it (once per device); a launch packs the parameters of
Numba's data model itself and hands them to ``cuda.core.launch``:

- an array (fields ``ARRAY_FIELDS``): ``meminfo`` and ``parent`` 0 (nothing to count or
  keep alive on a device), the element count, the item size, the data pointer, the extents
  and the strides in bytes, each a 64-bit integer;
- a Python ``int``: a 64-bit integer; a Python ``bool``: one byte (Numba's boolean
  parameter; recent ``cuda.core`` packs a bool as a one-byte C++ ``bool``, older releases
  as a 64-bit integer, of which the driver copies the parameter's first byte: 0 or 1
  either way);
- a Python ``float``: a double; a NumPy scalar: its own type.

``tests/test_ptx.py`` checks these parameters against the PTX entry of every signature, and
each kernel's first load against the sizes the driver reports for its parameters. A launch
first makes the current device's context current on its thread, as Numba's launch does (a
worker thread may not have one yet). Numba's launch is taken instead for a kernel built
with what only it handles (debug exception reporting, cooperative launch, argument
extensions, launch-configuration-sensitive code: none of ours), where the installed
numba-cuda or ``cuda.core`` lacks what this path uses, and with
``GPUKERNELS_CUDA_LAUNCH=numba`` (``gpukernels.cuda._cuda.launch``).
"""

from __future__ import annotations

import functools
import threading
import warnings
from types import SimpleNamespace

import numpy as np
from numba import typeof
from numba.core import types
from numba.np import numpy_support

ARRAY_FIELDS = ("meminfo", "parent", "nitems", "itemsize", "data", "shape", "strides")
_NUMBERS = (int, float, bool)

_KERNELS: dict[tuple, object] = {}  # (dispatcher, device, argument keys) -> handle or None
_UNLOADED = object()
_BOUND = threading.local()  # .device: the device whose context this thread made current
_LEGACY_STREAM = 1  # CU_STREAM_LEGACY: the stream CuPy's null stream (pointer 0) stands for


def parameters(args) -> tuple[tuple, list]:
    """``(key, params)`` of a launch's arguments: a key that determines the signature (an
    array's dtype, rank and contiguity; a number's type) and the kernel parameters."""
    key, params = [], []
    for a in args:
        if _is_number(a):
            key.append(type(a))
            params.append(a)
        else:
            flags = a.flags
            key.append((a.dtype, a.ndim, flags.c_contiguous, flags.f_contiguous))
            params += (0, 0, a.size, a.itemsize, a.data.ptr, *a.shape, *a.strides)
    return tuple(key), params


def argument_type(a) -> types.Type:
    """The Numba type ``a`` is compiled for, as Numba types a launch argument: an array by
    its dtype, rank and layout (``C``, else ``F``, else ``A``), a number by its type."""
    if _is_number(a):
        return typeof(a)
    flags = a.flags
    layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
    return types.Array(numpy_support.from_dtype(a.dtype), a.ndim, layout)


def _is_number(a) -> bool:
    """Whether the launch argument ``a`` is a number (Python or NumPy), not an array."""
    return type(a) in _NUMBERS or isinstance(a, np.generic)


def launch(kernel, grid, block, shared: int, args: tuple) -> bool:
    """Launch the Numba kernel ``kernel`` on CuPy's current stream and device with ``args``
    (CuPy arrays and numbers); ``False`` when it cannot be launched this way (no
    ``cuda.core``, or a compiled form without a ``cuda.core`` kernel), launching nothing."""
    libraries = _libraries()
    if libraries is None:
        return False
    cupy, core = libraries
    key, params = parameters(args)
    device = cupy.cuda.runtime.getDevice()
    if getattr(_BOUND, "device", None) != device:
        cupy.cuda.runtime.setDevice(device)  # its primary context, current on this thread
        _BOUND.device = device
    entry = (kernel, device, key)
    handle = _KERNELS.get(entry, _UNLOADED)
    if handle is _UNLOADED:
        handle = _KERNELS[entry] = _load(kernel, args, params)
    if handle is None:
        return False
    stream = _stream(int(cupy.cuda.get_current_stream().ptr) or _LEGACY_STREAM)
    core.launch(stream, _config(grid, block, shared), handle, *params)
    return True


@functools.cache
def _libraries():
    """CuPy and ``cuda.core`` (its ``launch``, ``LaunchConfig`` and ``Stream``), imported on
    the first launch; ``None`` without them (a ``cuda.core`` before 0.5 keeps them in
    ``cuda.core.experimental``, and an older numba-cuda launches through ctypes)."""
    import cupy

    try:
        from cuda.core import LaunchConfig, Stream, launch
    except ImportError:
        return None
    return cupy, SimpleNamespace(launch=launch, LaunchConfig=LaunchConfig, Stream=Stream)


def _load(kernel, args, params: list):
    """``kernel`` compiled for ``args``' types and loaded on the current device: its
    ``cuda.core`` kernel; ``None`` where Numba's launch must be taken (module docstring),
    with a warning if the driver's parameter sizes do not fit ``params``."""
    compiled = kernel.compile(tuple(argument_type(a) for a in args))
    numba_only = (
        compiled.debug
        or compiled.cooperative
        or getattr(compiled, "launch_config_sensitive", False)
        or kernel.targetoptions.get("extensions")
    )
    handle = None if numba_only else getattr(compiled._codelibrary.get_cufunc(), "kernel", None)
    if handle is None:
        return None
    try:
        sizes = [info.size for info in handle.arguments_info]
    except NotImplementedError:  # a driver before CUDA 12.4 cannot say: tests/test_ptx.py did
        return handle
    if not fits(params, sizes):
        warnings.warn(
            f"{kernel.py_func.__name__}: {len(params)} packed parameters do not fit the "
            f"kernel's {sizes}; launching it through Numba",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return handle


def fits(params: list, sizes: list[int]) -> bool:
    """Whether packed parameters fill parameters of ``sizes`` bytes: one each, a NumPy
    number its own size, a Python int or float 8 bytes, a Python bool 1 (the one width
    that both of ``cuda.core``'s packings of a bool fill, see above)."""
    if len(params) != len(sizes):
        return False
    for value, size in zip(params, sizes, strict=True):
        if isinstance(value, np.generic):
            width = value.itemsize
        elif isinstance(value, bool):
            width = 1
        else:
            width = 8
        if width != size:
            return False
    return True


@functools.lru_cache(maxsize=64)
def _stream(ptr: int):
    """The CUDA stream ``ptr`` as a ``cuda.core`` stream."""
    return _libraries()[1].Stream.from_handle(ptr)


@functools.lru_cache(maxsize=1024)
def _config(grid, block, shared: int):
    """A ``cuda.core`` launch configuration (grid and block: an int or a tuple)."""
    return _libraries()[1].LaunchConfig(grid=grid, block=block, shmem_size=shared)
