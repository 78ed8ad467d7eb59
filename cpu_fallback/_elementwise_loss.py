"""The CPU elementwise-loss kernel, one source for BCE, MSE and Huber: gradient and canonical
partial sums in one pass.

``loss_and_grad_launcher(element)`` builds an op's launcher from its scalar leaf
``element(prediction, target, param) -> (loss, slope)`` (``gpukernels._scalar``). Element
``i`` has weight ``w_i`` (1 when there is none), parameter ``param[i % L]`` and upstream
factor ``g_i``:

    grad_i = g_i w_i slope_i,    loss: w_i loss_i per element, or their canonical sum.

``g_i`` is the upstream gradient divided, for a mean, by its divisor; the sum, divided by the
same divisor, is formed in the same call.
"""

import numpy as np
from numba import prange, types
from numba.extending import overload

from gpukernels._canon import TILE, tile_count
from gpukernels._kinds import MEAN, SUM
from gpukernels._scalar import ONE

from . import at, compute_view, load, optional, output_view, parallel_kernel, put, store, window
from ._math import leaf
from .reduce import finish_tile, fold_tiles

_element = None  # each loss's leaf, bound by loss_and_grad_launcher


def per_divisor(scale, d):
    """The upstream factor ``scale`` (as :func:`at` takes it) over the divisor ``d``: a
    number for none (``1 / d``) or a number; an array (per element, ``"none"`` only, where
    ``d`` is 1) as it is."""
    if scale is None:
        return ONE / d
    return scale / d if np.ndim(scale) == 0 else scale


@overload(per_divisor)
def _per_divisor_overload(scale, d):
    if isinstance(scale, types.NoneType):
        return lambda scale, d: ONE / d
    if isinstance(scale, types.Number):
        return lambda scale, d: scale / d
    return lambda scale, d: scale


def _elementwise_loss_kernel(z, y, w, param, period, scale, grad, loss, reduction, divisor, chunk):
    n = z.shape[0]
    tiles = (n + TILE - 1) // TILE
    reduce, d = reduction >= SUM, loss.dtype.type(divisor if reduction == MEAN else 1)
    factor = per_divisor(scale, d)  # a mean's upstream gradient is a scalar: u / d
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(TILE, loss.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            lo = j * TILE
            count = min(TILE, n - lo)
            hi = lo + count
            # the tile's own views, indexed from 0: the loop over them vectorises (indexed
            # at j * TILE + k, the whole arrays' loop ran 3x slower)
            z_t, y_t, grad_t = z[lo:hi], y[lo:hi], window(grad, lo, hi)
            w_t, scale_t = window(w, lo, hi), window(factor, lo, hi)
            for k in range(count):
                value, slope = _element(load(z_t, k), load(y_t, k), at(param, lo + k, period))
                w_k = at(w_t, k)
                if grad is not None:  # None: the loss alone (a variant without the write)
                    put(grad_t, k, w_k * slope * at(scale_t, k))
                s[k] = w_k * value
            finish_tile(s, count, j, loss, reduce)
    if reduce:
        loss[0] = fold_tiles(loss, tiles) / d


def loss_and_grad_launcher(element):
    """The launcher ``loss_and_grad`` of the elementwise loss whose leaf is ``element``."""
    kernel = parallel_kernel(
        _elementwise_loss_kernel, f"{element.__name__}_loss_kernel", {"_element": leaf(element)}
    )

    def loss_and_grad(pred, target, weight, param, grad_scale, grad, loss, reduction, divisor):
        """Per-element loss and gradient of the 1-D ``pred`` against ``target``, reduced.

        ``weight`` ``(n,)`` acc or ``(0,)``; ``param`` ``(L,)`` acc or ``(0,)``, element ``i``
        using ``param[i % L]``; ``grad_scale`` ``(0,)`` (1), ``(1,)`` or ``(n,)`` acc;
        ``grad`` ``(n,)`` of ``pred``'s dtype (may be ``pred``), or ``None`` for the loss
        alone. ``reduction`` a
        ``Reduction`` code: ``NONE`` writes the losses into ``loss`` ``(n,)``; ``SUM`` and
        ``MEAN`` their canonical sum into ``loss[0]`` (``loss`` ``(ceil(n / TILE),)`` acc, the
        tile sums' scratch), ``MEAN`` dividing it and the gradient by ``divisor`` (> 0).
        """
        buffer = output_view(grad)
        kernel(
            compute_view(pred),
            compute_view(target),
            optional(weight),
            optional(param),
            max(1, param.shape[0]),
            optional(grad_scale),
            buffer,
            loss,
            reduction,
            divisor,
            work=pred.shape[0],
            items=tile_count(pred.shape[0]),
        )
        store(buffer, grad)

    loss_and_grad.kernel = kernel
    return loss_and_grad
