r"""Squared error: loss and gradient per element, fused canonical tile sums.

.. math::
    \ell_i = (p_i - t_i)^2, \qquad \frac{\partial \ell_i}{\partial p_i} = 2 (p_i - t_i)

times ``grad_scale`` (one value, or one per element). A block covers whole tiles of ``TILE``
elements; with ``reduce`` it writes the canonical sum of each tile's losses (the bits of
``reduce.tile_sums`` over the unreduced losses), else the losses themselves.
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.core import types

from .._canon import TILE
from ._cuda import GPU_POLICY, POLICY, STORAGE_TYPES, acc_constant, accumulator, launch, tile_grid
from .reduce import block_tile_sum, register_fold


@functools.cache
def _mse_kernel(acc, tpb: int):
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    zero, two = acc_constant(acc, 0.0), acc_constant(acc, 2.0)

    @cuda.jit
    def _mse_tiles_kernel(pred, target, grad_scale, grad, loss, reduce):
        smem = cuda.shared.array(tpb, acc)
        r = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n = pred.shape[0]
        per_element = grad_scale.shape[0] > 1
        for tile in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
            first = types.int64(tile) * TILE + t
            for k in range(count):
                i = first + tpb * k
                value = zero
                if i < n:
                    d = acc(pred[i]) - acc(target[i])
                    grad[i] = grad_scale[i if per_element else 0] * (two * d)
                    value = acc(d * d)  # rounded here: the tile sum adds the stored bits
                    if not reduce:
                        loss[i] = value
                r[k] = value
            if reduce:
                v = tree(fold(r), smem, t)
                if t == 0:
                    loss[tile] = v

    return _mse_tiles_kernel


def mse(pred, target, grad_scale, grad, loss, reduce) -> None:
    """Per-element squared error and its gradient of the 1-D arrays ``pred``, ``target``.

    ``grad_scale`` ``(1,)`` or ``(n,)`` acc; ``grad`` ``(n,)`` storage dtype (may be
    ``pred``); ``loss`` ``(ceil(n / TILE),)`` tile sums when ``reduce``, else ``(n,)``, in acc.
    """
    n = pred.shape[0]
    if n == 0:
        return
    tpb = POLICY.tile_threads
    kernel = _mse_kernel(accumulator(loss.dtype), tpb)
    grid = tile_grid(-(-n // TILE))
    launch(kernel, grid, tpb, 0, pred, target, grad_scale, grad, loss, bool(reduce))


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    sigs = []
    for dtype in STORAGE_TYPES:
        acc = accumulator(dtype.name)
        vec, acc_vec = dtype[::1], acc[::1]
        kernel = _mse_kernel(acc, GPU_POLICY.tile_threads)
        sigs.append((kernel, (vec, vec, acc_vec, vec, acc_vec, types.boolean)))
    return sigs
