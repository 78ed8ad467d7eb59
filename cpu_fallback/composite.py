"""Composite loss on the CPU: every term of a row in one parallel pass over the rows.

A softmax cross-entropy term runs the row functions of ``softmax_xent`` (``label_block``,
``soft_block``) and the elementwise terms the scalar leaves of ``gpukernels._scalar``: each
formula is the one the single losses use. Each row's predictions are copied to a scratch row
first, and each term's gradient is formed in scratch and added into its columns, so the
gradient may be written over ``pred`` even where terms read overlapping columns.
"""

import numpy as np
from numba import prange

from gpukernels import _kinds, _scalar
from gpukernels._scalar import ONE, ZERO

from . import (
    CACHE,
    compute_view,
    flush_rows,
    holds_bits,
    output_view,
    parallel_kernel,
    rows_in,
    rows_out,
    store,
    widen,
)
from ._cache import njit
from ._math import leaf
from .softmax_xent import capped, label_block, soft_block, through_cap

_bce = leaf(_scalar.bce_with_logits)
_squared_error = leaf(_scalar.squared_error)
_huber = leaf(_scalar.huber)
_XENT, _BCE, _MSE = _kinds.SOFTMAX_CROSS_ENTROPY, _kinds.BCE_WITH_LOGITS, _kinds.MSE
_NO_CLASS, _NEVER_IGNORED = -1, -2


@njit(cache=CACHE)
def _xent_term(z, t, no_weight, z_loss, cap, zc, e, grad, label_scratch):
    """Softmax CE of ``z`` against a class index (``t`` one value, ``z`` wider) or the
    probabilities ``t``, unscaled, with its z-loss; its gradient into ``grad``. With a cap
    the logits are capped into the scratch ``zc`` first and the gradient taken through the
    cap. A class index that is not a whole number in ``[0, len(z))`` gives a NaN loss and a
    zero gradient (not through the cap). ``label_scratch`` is ``(label, stats, loss)``, one
    row each, for softmax_xent's ``label_block`` and ``soft_block`` (the single CE's
    arithmetic, in its order)."""
    if cap > 0:
        capped(z, cap, zc)
        z = zc
    taken = True
    label, stats, out = label_scratch
    scale = (None, ONE, False)  # unscaled
    row, e_row, grad_row = z[None, :], e[None, :], grad[None, :]  # a block of one row
    if t.shape[0] == 1 and z.shape[0] > 1:
        v = t[0]
        y = int(v) if v >= 0 and v < z.shape[0] and v == np.floor(v) else _NO_CLASS
        label[0], taken = y, y != _NO_CLASS
        args = (_NEVER_IGNORED, ZERO, ZERO, z_loss)
        label_block(row, 0, label, 0, 1, no_weight, scale, args, stats, e_row, grad_row, 0, out)
    else:
        args = (ONE, ZERO, z_loss)  # keep, eps / C, z-loss
        t_row = t[None, :]  # a view: t may be strided
        soft_block(row, 0, t_row, 0, 0, 1, no_weight, scale, args, stats, e_row, grad_row, 0, out)
    if cap > 0 and taken:
        through_cap(zc, cap, grad)
    return out[0]


@njit(cache=CACHE)
def _elementwise_term(kind, z, t, param, grad):
    """Row loss of a BCE, MSE or Huber term, the sum over its columns; slopes into ``grad``."""
    loss = z.dtype.type(0)  # not 0 * z[0]: NaN for an infinite first column
    for c in range(z.shape[0]):
        if kind == _BCE:
            value, slope = _bce(z[c], t[c], ONE)
        elif kind == _MSE:
            value, slope = _squared_error(z[c], t[c], ONE)
        else:
            value, slope = _huber(z[c], t[c], param)
        loss += value
        grad[c] = slope
    return loss


def _composite_kernel(
    pred, target, kinds, cols, tcols, only_where, term_scale, term_param, grad, row_loss, chunk
):
    n, width = pred.shape
    for b in prange((n + chunk - 1) // chunk):
        z = np.empty(width, row_loss.dtype)
        # bfloat16: the target row widened into tc, the gradient summed in gc and rounded
        tc = np.empty((1 if holds_bits(target) else 0, target.shape[1]), row_loss.dtype)
        gc = np.empty((1 if holds_bits(grad) else 0, width), row_loss.dtype)
        e = np.empty(width, row_loss.dtype)
        term_grad = np.empty(width, row_loss.dtype)
        capped_row = np.empty(width, row_loss.dtype)
        no_weight = np.empty(0, row_loss.dtype)
        label_scratch = (
            np.empty(1, np.int64),
            np.empty((3, 1), row_loss.dtype),
            np.empty(1, row_loss.dtype),
        )
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            widen(pred[i], z)
            t_rows, t_lo = rows_in(target, i, 1, tc)
            t = t_rows[t_lo]
            if grad is not None:  # None: the loss alone (a variant without the writes)
                out, out_lo = rows_out(grad, i, gc)
                grad_i = out[out_lo]
                grad_i[:] = 0
            for k in range(kinds.shape[0]):
                if only_where[k] >= 0 and t[only_where[k]] == 0:
                    row_loss[i, k] = 0
                    continue
                c0, c1 = cols[k, 0], cols[k, 1]
                zk, gk = z[c0:c1], term_grad[: c1 - c0]
                tk = t[tcols[k, 0] : tcols[k, 1]]
                if kinds[k] == _XENT:
                    z_loss, cap = term_param[k, 1], term_param[k, 2]
                    zc, ek = capped_row[: c1 - c0], e[: c1 - c0]
                    row_loss[i, k] = _xent_term(
                        zk, tk, no_weight, z_loss, cap, zc, ek, gk, label_scratch
                    )
                else:
                    row_loss[i, k] = _elementwise_term(kinds[k], zk, tk, term_param[k, 0], gk)
                if grad is not None:
                    for c in range(c1 - c0):
                        grad_i[c0 + c] += term_scale[k] * gk[c]
            flush_rows(gc, grad, i, 1)


_kernel = parallel_kernel(_composite_kernel)


def composite(pred, target, kinds, cols, tcols, only_where, term_scale, term_param, grad, row_loss):
    """Every term of every row: row losses into ``row_loss``, summed gradients into ``grad``
    (none for ``None``: the loss alone; the terms' gradients are then formed in a row's
    scratch and dropped)."""
    buffer = output_view(grad)
    _kernel(
        compute_view(pred),
        compute_view(target),
        kinds,
        cols,
        tcols,
        only_where,
        term_scale,
        term_param,
        buffer,
        row_loss,
        work=pred.size,
        items=pred.shape[0],
    )
    store(buffer, grad)
