"""Composite loss on the CPU: every term of a row in one parallel pass over the rows.

Each row's predictions are copied to a scratch row first, so the gradient may be written over
``pred`` even where terms read overlapping columns.
"""

import math

import numpy as np
from numba import njit, prange

from gpukernels._scalar import ONE, ZERO

from . import ParallelKernel, compute_view, output_view, per_task, store
from ._math import bce_with_logits

_TWO = np.float32(2.0)
_NAN = np.float32(np.nan)
SOFTMAX_XENT, BCE, MSE = 0, 1, 2


@njit(cache=True)
def _softmax_xent_term(z, t, scale, grad):
    """Row loss of softmax CE on ``z`` against a class index (``t`` one value, ``z`` wider)
    or probabilities ``t``; adds ``scale * (A p - t)`` to ``grad``."""
    m = z[0]
    for c in range(1, z.shape[0]):
        m = z[c] if z[c] > m else m
    s = ZERO * m
    for c in range(z.shape[0]):
        s += math.exp(z[c] - m)
    lse = m + math.log(s)
    if t.shape[0] == 1 and z.shape[0] > 1:
        if not (t[0] >= 0 and t[0] < z.shape[0]):
            return _NAN * m  # no class of this term: visible in the loss, no gradient
        y = int(t[0])
        for c in range(z.shape[0]):
            grad[c] += scale * math.exp(z[c] - lse)
        grad[y] -= scale
        return lse - z[y]
    a_sum, loss = ZERO * m, ZERO * m
    for c in range(z.shape[0]):
        a_sum += t[c]
        loss += t[c] * (lse - z[c])
    for c in range(z.shape[0]):
        grad[c] += scale * (a_sum * math.exp(z[c] - lse) - t[c])
    return loss


@njit(cache=True)
def _elementwise_term(kind, z, t, scale, grad):
    """Row loss of BCE-with-logits or MSE over the term's columns; adds its gradient."""
    loss = ZERO * scale
    for c in range(z.shape[0]):
        if kind == BCE:
            value, slope = bce_with_logits(z[c], t[c], ONE)
        else:
            d = z[c] - t[c]
            value, slope = d * d, _TWO * d
        loss += value
        grad[c] += scale * slope
    return loss


@ParallelKernel
def _kernel(pred, target, kinds, cols, tcols, only_where, term_scale, grad, row_loss, chunk):
    n, width = pred.shape
    for b in prange((n + chunk - 1) // chunk):
        z = np.empty(width, grad.dtype)
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            z[:] = pred[i]
            grad[i] = 0
            for k in range(kinds.shape[0]):
                if only_where[k] >= 0 and target[i, only_where[k]] == 0:
                    row_loss[i, k] = 0
                    continue
                zk = z[cols[k, 0] : cols[k, 1]]
                tk = target[i, tcols[k, 0] : tcols[k, 1]]
                gk = grad[i, cols[k, 0] : cols[k, 1]]
                if kinds[k] == SOFTMAX_XENT:
                    row_loss[i, k] = _softmax_xent_term(zk, tk, term_scale[k], gk)
                else:
                    row_loss[i, k] = _elementwise_term(kinds[k], zk, tk, term_scale[k], gk)


def composite(pred, target, kinds, cols, tcols, only_where, term_scale, grad, row_loss):
    """Every term of every row: row losses into ``row_loss``, summed gradients into ``grad``."""
    buffer = output_view(grad)
    _kernel(
        compute_view(pred),
        compute_view(target),
        kinds,
        cols,
        tcols,
        only_where,
        term_scale,
        buffer,
        row_loss,
        per_task(pred.shape[0]),
        work=pred.size,
    )
    store(buffer, grad)
