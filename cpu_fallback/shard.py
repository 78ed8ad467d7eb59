"""Class-sharded cross-entropy's local steps on the CPU: a shard's row stats, and its loss and
gradient columns from the merged stats of the whole rows (maths in ``gpukernels._shard``).
The row functions are softmax_xent's (max, shifted exponentials, softcap) and reduce.lane_sum."""

import math

import numpy as np
from numba import prange

from gpukernels._scalar import ONE, ZERO

from . import at, compute_view, load, optional, output_view, parallel_kernel, put, store, widen
from .reduce import lane_sum
from .softmax_xent import _exp_shifted, _row_max, capped


def _stats_kernel(logits, labels, stats, start, cap, chunk):
    n, width = logits.shape
    cap = stats.dtype.type(cap)  # options come as Python numbers: a cheaper dispatch
    for b in prange((n + chunk - 1) // chunk):
        zc = np.empty(width, stats.dtype)
        e = np.empty(width, stats.dtype)
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            if cap > 0:
                capped(logits[i], cap, zc)
            else:
                widen(logits[i], zc)
            m = _row_max(zc)
            _exp_shifted(zc, m if m > -np.inf else ZERO, e)  # a row of -inf: sum 0
            local = labels[i] - start
            stats[i, 0] = m
            stats[i, 1] = lane_sum(e)
            stats[i, 2] = zc[local] if 0 <= local < width else 0
            stats[i, 3] = lane_sum(zc)


def _loss_grad_kernel(
    logits, labels, stats, scale, grad, row_loss, start, classes, ignore, eps, zl, cap, chunk
):
    n, width = logits.shape
    acc = row_loss.dtype.type  # options come as Python numbers: a cheaper dispatch
    classes, eps, zl, cap = acc(classes), acc(eps), acc(zl), acc(cap)
    for b in prange((n + chunk - 1) // chunk):
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            if labels[i] == ignore:
                grad[i] = 0
                row_loss[i] = 0
                continue
            m, s, z_y, z_sum = stats[i, 0], stats[i, 1], stats[i, 2], stats[i, 3]
            log_s = math.log(s)
            lse = m + log_s
            keep, eps_c = ONE - eps, eps / classes
            loss = keep * ((m - z_y) + log_s)  # m - z_y exact for the large logits that matter
            if eps > 0:  # terms that are off are left out: 0 * inf would make the row NaN
                loss = loss + eps * lse - eps_c * z_sum
            if zl > 0:
                loss = loss + zl * lse * lse
            row_loss[i] = loss
            g, a = at(scale, i), ONE + (zl + zl) * lse if zl > 0 else ONE
            local = labels[i] - start
            for c in range(width):
                z = load(logits, (i, c))
                zc = cap * math.tanh(z / cap) if cap > 0 else z
                v = a * math.exp(zc - m) / s - eps_c
                if c == local:
                    v -= keep
                slope = ONE - (zc / cap) * (zc / cap) if cap > 0 else ONE
                put(grad, (i, c), g * v * slope)


_stats = parallel_kernel(_stats_kernel)
_loss_grad = parallel_kernel(_loss_grad_kernel)


def shard_stats(logits, labels, stats, class_start, softcap):
    """stats[i] = [max, sum exp(z - max), z_target or 0, sum z] of the shard's row ``i``."""
    n, width = logits.shape
    if width == 0:
        stats[:] = 0
        stats[:, 0] = -np.inf
        return
    view = compute_view(logits)
    _stats(view, labels, stats, class_start, float(softcap), work=logits.size, items=n)


def shard_loss_and_grad(
    logits,
    labels,
    stats,
    grad_scale,
    grad,
    row_loss,
    class_start,
    num_classes,
    ignore_index,
    smoothing,
    z_loss,
    softcap,
):
    """Row losses of the whole rows and this shard's gradient columns (``grad_scale`` the
    per-row or shared factor, 0 on ignored rows not required: they are skipped)."""
    buffer = output_view(grad)
    _loss_grad(
        compute_view(logits),
        labels,
        stats,
        optional(grad_scale),
        buffer,
        row_loss,
        class_start,
        float(num_classes),
        ignore_index,
        float(smoothing),
        float(z_loss),
        float(softcap),
        work=logits.size,
        items=logits.shape[0],
    )
    store(buffer, grad)
