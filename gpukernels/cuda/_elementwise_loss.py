r"""The CUDA elementwise-loss kernel, one source for BCE, MSE and Huber: loss and gradient per
element, fused canonical tile sums.

``loss_and_grad_launcher(element)`` builds an op's launcher (and its PTX signatures) from its
scalar leaf ``element(prediction, target, param) -> (loss, slope)`` of
``gpukernels._scalar``. Element ``i`` has weight ``w_i`` (1 when there is none), parameter
``param[i % L]`` and upstream factor ``g_i``:

.. math::
    \mathrm{grad}_i = g_i\, w_i\, \mathrm{slope}_i, \qquad \ell_i = w_i\, \mathrm{loss}_i

A block covers whole tiles of ``TILE`` elements; reducing, it writes the canonical sum of each
tile's losses (the bits of ``reduce.total`` over the unreduced losses) and the last block to
finish folds them to the total, in the same launch; else the losses themselves. A ``grad`` of
no elements asks for the loss alone. Maths in the accumulation dtype, rounded once at the
store.
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.core import types

from .._canon import TILE, tile_count
from .._kinds import MEAN, SUM
from ._cuda import (
    GPU_POLICY,
    POLICY,
    STORAGE,
    acc_constant,
    accumulator,
    bits,
    element_io,
    gradient_or_none,
    is_bf16,
    kernel_type,
    launch,
    scalar_device,
    tile_grid,
)
from .reduce import (
    block_tile_sum,
    fold_counted,
    last_block,
    register_fold,
    tile_counted,
    tile_counters,
)


@functools.cache
def _elementwise_loss_kernel(element, acc, tpb: int, bf16: bool, target_bf16: bool):
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)
    leaf = scalar_device(element, acc)
    load, store = element_io(acc, bf16)
    load_target = element_io(acc, target_bf16)[0]
    counted, fold_tiles, is_last = tile_counted(acc, tpb), fold_counted(acc, tpb), last_block()

    @cuda.jit
    def _elementwise_loss_tiles_kernel(
        z, y, weight, param, grad_scale, grad, loss, reduction, divisor, counters
    ):
        smem = cuda.shared.array(tpb, acc)
        flag = cuda.shared.array(1, types.int32)
        r = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n = z.shape[0]
        tiles = (n + TILE - 1) // TILE
        period = param.shape[0]
        has_w = weight.shape[0] > 0
        writes = grad.shape[0] > 0  # else the loss alone
        per_element = grad_scale.shape[0] > 1
        reduce = reduction >= SUM
        d = acc(divisor)
        # a mean's upstream gradient is a scalar: u / d, the same for every element
        scale = grad_scale[0] if grad_scale.shape[0] > 0 else one
        if reduction == MEAN:
            scale = scale / d
        for tile in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):
            first = types.int64(tile) * TILE + t
            for k in range(count):
                i = first + tpb * k
                value = zero
                if i < n:
                    p = acc(param[i % period]) if period > 0 else one
                    w = acc(weight[i]) if has_w else one
                    li, gi = leaf(load(z[i]), load_target(y[i]), p)
                    if writes:
                        g = grad_scale[i] if per_element else scale
                        grad[i] = store(g * (w * gi))
                    # rounded to acc here so that the tile sum adds the stored bits
                    value = acc(w * li)
                    if not reduce:
                        loss[i] = value
                r[k] = value
            if reduce:
                v = tree(fold(r), smem, t)
                if t == 0:
                    loss[tile] = v
                counted(loss, tile, tiles, counters, smem, r, flag, t)
        if reduce and is_last(counters, flag, t):
            total = fold_tiles(loss, tiles, smem, r, t)
            if t == 0:
                loss[0] = total / d if reduction == MEAN else total

    return _elementwise_loss_tiles_kernel


def loss_and_grad_launcher(element):
    """``(loss_and_grad, ptx_signatures)`` of the elementwise loss whose leaf is ``element``."""

    def loss_and_grad(
        pred, target, weight, param, grad_scale, grad, loss, reduction, divisor
    ) -> None:
        """Per-element loss and gradient of the 1-D ``pred`` against ``target``, reduced, in
        one launch (the contract of ``cpu_fallback``'s twin: docs/BACKENDS.md)."""
        n = pred.shape[0]
        if n == 0:
            return
        tpb = POLICY.tile_threads
        bf16 = is_bf16(pred.dtype), is_bf16(target.dtype)
        kernel = _elementwise_loss_kernel(element, accumulator(loss.dtype), tpb, *bf16)
        tiles = tile_count(n)
        grid = tile_grid(tiles)
        grad = gradient_or_none(grad, pred)
        arrays = (bits(pred), bits(target), weight, param, grad_scale, grad, loss)
        counters = tile_counters(tiles if reduction else 0)  # no sum: no groups
        launch(kernel, grid, tpb, 0, *arrays, int(reduction), float(divisor), counters)

    def ptx_signatures():
        """``(kernel, argument types)`` of every launch ``loss_and_grad`` makes on a GPU: the
        target of the prediction's dtype or, for another one, of the accumulation dtype."""
        sigs = []
        for dtype in STORAGE:
            acc = accumulator(dtype)
            vec, acc_vec = kernel_type(dtype)[::1], acc[::1]
            for target, target_bf16 in {(vec, is_bf16(dtype)), (acc_vec, False)}:
                tpb, bf16 = GPU_POLICY.tile_threads, is_bf16(dtype)
                kernel = _elementwise_loss_kernel(element, acc, tpb, bf16, target_bf16)
                arrays = (vec, target, acc_vec, acc_vec, acc_vec, vec, acc_vec)
                scalars = (types.int64, types.float64, types.int32[::1])
                sigs.append((kernel, arrays + scalars))
        return sigs

    return loss_and_grad, ptx_signatures
