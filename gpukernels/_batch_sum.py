"""``batch_sum`` and the canonical (deterministic, pairwise) sums the losses reduce with."""

from __future__ import annotations

import math

import numpy as np

from . import _validate
from ._canon import tile_count
from ._common import flat_input
from ._dispatch import ArrayArguments, Call, accumulation_dtype, backend_of, kernels
from ._tensors import tensor_io


def canonical_sum(call: Call, v):
    """Sum of the 1-D array ``v`` in the canonical tile-tree order, as a 0-d array: one launch
    of ``reduce.total`` on ``v``'s device (nothing read back)."""
    xp, acc = call.xp, accumulation_dtype(v.dtype)
    out = xp.empty(1, acc)
    call.ops("reduce").total(v, out, xp.empty(tile_count(v.shape[0]), acc))
    return out[0, ...]


def canonical_column_sums(call: Call, x):
    """Per-column canonical sums of the 2-D array ``x``: shape ``(x.shape[1],)``, one launch
    of ``reduce.column_totals``."""
    xp, acc = call.xp, accumulation_dtype(x.dtype)
    n, m = x.shape
    out = xp.empty(m, acc)
    call.ops("reduce").column_totals(x, out, xp.empty((tile_count(n), m), acc))
    return out


_ARGUMENTS = ArrayArguments("x", optional=("out",))
_SMALL_SUM_DTYPES = frozenset([np.dtype(np.float32), np.dtype(np.float64)])


@tensor_io(_ARGUMENTS)
def batch_sum(x, *, axis: int | None = None, out=None):
    r"""Deterministic parallel sum of ``x``, over every element or over the batch axis.

    .. math::
        \mathrm{batch\_sum}(x) = \sum_i x_i, \qquad
        \mathrm{batch\_sum}(x, \mathrm{axis}=0)_j = \sum_i x_{i, j}

    The order is a fixed pairwise tree (tiles of 256 values folded by halving, the tile sums
    folded again), so the same input gives the same bits on every run, launch shape and
    backend, and the error grows like ``log2(n)`` roundings. float16, bfloat16 and
    float32 accumulate in float32, float64 in float64.

    Args:
        x: array of any shape, float16/bfloat16/float32/float64 (NumPy or CuPy).
        axis: ``None`` sums every element (0-d result); ``0`` sums over the first axis
            (result ``x.shape[1:]``, the bias gradient of a layer).
        out: optional array of the result's shape and dtype to write into.

    Returns:
        The sum: float32 for 16-bit input, else ``x``'s dtype.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> gk.batch_sum(np.ones((4, 3), np.float32), axis=0)
        array([4., 4., 4.], dtype=float32)
    """
    if out is None and type(x) is np.ndarray and x.dtype in _SMALL_SUM_DTYPES:
        # the general path's checks for such x, in its order (cpu_fallback.reduce.numpy_sum)
        if backend_of("numpy") == "cpu":
            _validate.axis(axis, x.ndim)
            result = kernels("cpu", "reduce").numpy_sum(x, axis)
            if result is not None:
                return result
    call = _ARGUMENTS.call(x, out)
    x, out = call.arrays
    dtype = _validate.float_array("x", x)
    _validate.axis(axis, x.ndim)
    acc = accumulation_dtype(dtype)
    shape = () if axis is None else tuple(x.shape[1:])
    _validate.out_array(out, shape, acc, call.library)
    xp = call.xp
    if axis is None:
        result = canonical_sum(call, flat_input(xp, x))
    else:
        width = math.prod(shape)
        columns = canonical_column_sums(call, x.reshape(x.shape[0], width))
        result = columns.reshape(shape)
    if out is None:
        return result
    out[...] = result
    return out
