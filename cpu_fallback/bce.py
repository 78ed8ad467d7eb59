"""Binary cross-entropy with logits on the CPU: gradient and canonical partial sums, one pass."""

import numpy as np
from numba import prange

from gpukernels._canon import TILE

from . import ParallelKernel, at, compute_view, optional, output_view, store
from ._math import bce_with_logits as _element
from .reduce import finish_tile, tasks


@ParallelKernel
def _kernel(z, y, w, pw, last, scale, grad, loss, reduce, chunk):
    n = z.shape[0]
    tiles = (n + TILE - 1) // TILE
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(TILE, loss.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            count = min(TILE, n - j * TILE)
            for k in range(count):
                i = j * TILE + k
                value, slope = _element(z[i], y[i], at(pw, i % last))
                w_i = at(w, i)
                grad[i] = w_i * slope * at(scale, i)
                s[k] = w_i * value
            finish_tile(s, count, j, loss, reduce)


def bce_with_logits(z, y, weight, pos_weight, grad_scale, grad, loss, reduce):
    """grad_i = g_i w_i (lw_i sigma(z_i) - pw_i y_i); loss: tile sums or elementwise."""
    buffer = output_view(grad)
    _kernel(
        compute_view(z),
        compute_view(y),
        optional(weight),
        optional(pos_weight),
        max(1, pos_weight.shape[0]),
        optional(grad_scale),
        buffer,
        loss,
        reduce,
        tasks(z.shape[0])[1],
        work=z.shape[0],
    )
    store(buffer, grad)
