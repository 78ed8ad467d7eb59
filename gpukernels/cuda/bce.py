r"""Binary cross-entropy with logits: loss and gradient per element, fused tile sums.

For logit ``z``, target ``y``, weight ``w`` and positive weight ``pw``
(:math:`l_w = 1 + (pw - 1) y`):

.. math::
    \ell = w \left[(1 - y) z + l_w \left(\log(1 + e^{-|z|}) + \max(-z, 0)\right)\right],
    \qquad \frac{\partial \ell}{\partial z} = w \left(l_w \sigma(z) - pw\, y\right)

(``gpukernels._scalar.bce_with_logits``, stable for any ``|z|``). A block covers whole tiles of
``TILE`` elements; with ``reduce`` it writes the canonical sum of each tile's losses (the
bits of ``reduce.tile_sums`` over the unreduced losses), else the losses themselves.
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.core import types

from .. import _scalar
from .._canon import TILE
from ._cuda import (
    GPU_POLICY,
    POLICY,
    STORAGE_TYPES,
    acc_constant,
    accumulator,
    launch,
    scalar_device,
    tile_grid,
)
from .reduce import block_tile_sum, register_fold


@functools.cache
def _bce_kernel(acc, tpb: int):
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)
    element = scalar_device(_scalar.bce_with_logits, acc)

    @cuda.jit
    def _bce_tiles_kernel(z, y, weight, pos_weight, grad_scale, grad, loss, reduce):
        smem = cuda.shared.array(tpb, acc)
        r = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n = z.shape[0]
        num_pw = pos_weight.shape[0]
        has_w = weight.shape[0] > 0
        per_element = grad_scale.shape[0] > 1
        for tile in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
            first = types.int64(tile) * TILE + t
            for k in range(count):
                i = first + tpb * k
                value = zero
                if i < n:
                    pw = acc(pos_weight[i % num_pw]) if num_pw > 0 else one
                    w = acc(weight[i]) if has_w else one
                    li, gi = element(acc(z[i]), acc(y[i]), pw)
                    grad[i] = grad_scale[i if per_element else 0] * (w * gi)
                    # rounded to acc here so that the tile sum adds the stored bits
                    value = acc(w * li)
                    if not reduce:
                        loss[i] = value
                r[k] = value
            if reduce:
                v = tree(fold(r), smem, t)
                if t == 0:
                    loss[tile] = v

    return _bce_tiles_kernel


def bce_with_logits(z, y, weight, pos_weight, grad_scale, grad, loss, reduce) -> None:
    """Per-element BCE-with-logits loss and gradient of the 1-D arrays ``z``, ``y``.

    ``weight`` ``(n,)`` acc or ``(0,)``; ``pos_weight`` ``(L,)`` acc or ``(0,)``, element ``i``
    using ``pos_weight[i % L]``; ``grad_scale`` ``(1,)`` or ``(n,)`` acc; ``grad`` ``(n,)``
    storage dtype (may be ``z``); ``loss`` ``(ceil(n / TILE),)`` tile sums when ``reduce``,
    else ``(n,)`` losses, in acc.
    """
    n = z.shape[0]
    if n == 0:
        return
    tpb = POLICY.tile_threads
    kernel = _bce_kernel(accumulator(loss.dtype), tpb)
    grid = tile_grid(-(-n // TILE))
    launch(kernel, grid, tpb, 0, z, y, weight, pos_weight, grad_scale, grad, loss, bool(reduce))


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    sigs = []
    for dtype in STORAGE_TYPES:
        acc = accumulator(dtype.name)
        vec, acc_vec = dtype[::1], acc[::1]
        kernel = _bce_kernel(acc, GPU_POLICY.tile_threads)
        args = (vec, vec, acc_vec, acc_vec, acc_vec, vec, acc_vec, types.boolean)
        sigs.append((kernel, args))
    return sigs
