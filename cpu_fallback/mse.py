"""Squared error on the CPU: gradient and canonical partial sums, one pass."""

import numpy as np
from numba import prange

from gpukernels._canon import TILE

from . import ParallelKernel, at, compute_view, optional, output_view, store
from .reduce import finish_tile, tasks

_TWO = np.float32(2.0)


@ParallelKernel
def _kernel(p, t, scale, grad, loss, reduce, chunk):
    n = p.shape[0]
    tiles = (n + TILE - 1) // TILE
    for b in prange((tiles + chunk - 1) // chunk):
        s = np.empty(TILE, loss.dtype)
        for j in range(b * chunk, min(tiles, (b + 1) * chunk)):
            count = min(TILE, n - j * TILE)
            for k in range(count):
                i = j * TILE + k
                d = p[i] - t[i]
                grad[i] = _TWO * d * at(scale, i)
                s[k] = d * d
            finish_tile(s, count, j, loss, reduce)


def mse(pred, target, grad_scale, grad, loss, reduce):
    """grad_i = g_i 2 (p_i - t_i); loss: tile sums or elementwise squares."""
    buffer = output_view(grad)
    _kernel(
        compute_view(pred),
        compute_view(target),
        optional(grad_scale),
        buffer,
        loss,
        reduce,
        tasks(pred.shape[0])[1],
        work=pred.shape[0],
    )
    store(buffer, grad)
