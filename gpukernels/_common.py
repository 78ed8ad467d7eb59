"""Allocation helpers shared by the public functions (shapes, scales, ``out=`` buffers)."""

from __future__ import annotations

import math

import numpy as np

from . import _validate
from ._dtypes import ACCUMULATORS

# Shared: they have no elements to write. Writable, as a fresh one would be, so that the
# kernels see the type they were compiled for.
_NUMPY_ABSENT = {dtype: np.empty(0, dtype) for dtype in ACCUMULATORS}


def absent(xp, dtype: np.dtype):
    """An empty 1-D ``dtype`` array: how a launcher is told that an optional operand is
    absent. NumPy's are shared (allocating one would cost a small call a fifth of a
    microsecond); CuPy's are allocated on the current device (no memory, no launch).
    """
    if xp is np:
        return _NUMPY_ABSENT[dtype]
    return xp.empty(0, dtype)


def upstream_scale(xp, grad_output, acc: np.dtype, *, none_as_empty: bool = False):
    """``grad_output`` as a 1-D ``acc`` array: length 1 for a scalar, else flattened; for
    none, ``[1]``, or with ``none_as_empty`` an empty array (the fused launchers read it as 1,
    so nothing is launched to fill it).

    A Python number becomes a device-side fill (no host-to-device copy); an array stays
    where it is.
    """
    if grad_output is None:
        return absent(xp, acc) if none_as_empty else xp.ones(1, acc)
    if _validate.is_number(grad_output):
        return xp.full(1, _validate.real_number("grad_output", grad_output), acc)
    return xp.ascontiguousarray(grad_output, dtype=acc).reshape(-1)


def safe_divide(xp, value, divisor):
    """``value / divisor``, with a zero divisor taken as 1 (a mean over nothing is 0)."""
    return value / (divisor + (divisor == 0))


def flat_input(xp, x, dtype=None):
    """``x`` as a 1-D C-contiguous array (a copy only when ``x`` is not contiguous)."""
    return xp.ascontiguousarray(x, dtype=dtype).ravel()  # a view: it is contiguous


class FlatOutput:
    """A 1-D buffer for an elementwise launcher that lands in ``out`` (or a new array).

    When ``out`` is not C-contiguous the launcher writes a temporary that ``result`` copies
    into ``out``; otherwise it writes ``out``'s memory directly.
    """

    __slots__ = ("flat", "out", "shape")

    def __init__(self, xp, out, shape: tuple[int, ...], dtype: np.dtype):
        self.shape = shape
        if out is None:
            out = xp.empty(shape, dtype)
        self.out = out
        if out.flags.c_contiguous:
            self.flat = out.ravel()  # a view: it is contiguous
        else:
            self.flat = xp.empty(math.prod(shape), dtype)

    def result(self):
        if not self.out.flags.c_contiguous:
            self.out[...] = self.flat.reshape(self.shape)
        return self.out
