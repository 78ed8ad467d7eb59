"""Binary cross-entropy with logits on the CPU: gradient and canonical partial sums, one pass."""

import numpy as np
from numba import njit, prange

from gpukernels._canon import TILE
from gpukernels._scalar import ONE

from . import compute_view, output_view, store
from ._math import bce_with_logits as _element
from .reduce import finish_tile, tasks


@njit(parallel=True, cache=True)
def _kernel(z, y, w, pw, scale, grad, loss, reduce, chunk):
    n, last = z.shape[0], pw.shape[0]
    tiles = (n + TILE - 1) // TILE
    per_element = scale.shape[0] != 1
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(TILE, loss.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            count = min(TILE, n - j * TILE)
            for k in range(count):
                i = j * TILE + k
                value, slope = _element(z[i], y[i], pw[i % last] if last else ONE)
                if w.shape[0]:
                    value, slope = w[i] * value, w[i] * slope
                grad[i] = slope * (scale[i] if per_element else scale[0])
                s[k] = value
            finish_tile(s, count, j, loss, reduce)


def bce_with_logits(z, y, weight, pos_weight, grad_scale, grad, loss, reduce):
    """grad_i = g_i w_i (lw_i sigma(z_i) - pw_i y_i); loss: tile sums or elementwise."""
    buffer = output_view(grad)
    _kernel(
        compute_view(z),
        compute_view(y),
        weight,
        pos_weight,
        grad_scale,
        buffer,
        loss,
        reduce,
        tasks(z.shape[0])[1],
    )
    store(buffer, grad)
