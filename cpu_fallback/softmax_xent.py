"""Fused softmax cross-entropy on the CPU: loss and gradient per row, rows in parallel.

A row takes four passes while it is hot in cache: the max; ``e = exp(z - max)`` into a
per-thread scratch row (the only ``exp`` of each element, vectorised by ``fast_exp``); the
sum of ``e``; the gradient ``g (A e / s - a)``. The loss terms read the logits before the
gradient is written, so ``grad`` may be the logits themselves. See docs/BACKENDS.md.
"""

import math

import numpy as np
from numba import njit, prange

from gpukernels._kinds import MEAN, SUM
from gpukernels._scalar import ONE, ZERO

from . import (
    CACHE,
    FASTMATH,
    ParallelKernel,
    at,
    compute_view,
    optional,
    output_view,
    store,
)
from ._math import fast_exp
from .reduce import canonical_total

_NAN = np.float32(np.nan)
SHORT_ROW = 16  # classes a row at most to take the short-row path (without softcap)
SHORT_BLOCK = 64  # short rows whose exponentials are computed in one flat loop


@njit(fastmath=FASTMATH, cache=CACHE)
def _row_max(z):
    m = z[0]  # C >= 1; starting from z's own element keeps m in z's dtype
    for c in range(1, z.shape[0]):
        m = z[c] if z[c] > m else m  # NaN never wins; exp(NaN - m) makes the row NaN later
    return m


# Inlined (Numba IR) into the row functions, which have no fastmath: it would reassociate
# fast_exp's range reduction. Inlining saves a call per row, which short rows feel.
@njit(cache=CACHE, inline="always")
def _exp_shifted(z, m, e):
    for c in range(z.shape[0]):
        e[c] = fast_exp(z[c] - m)


@njit(fastmath=FASTMATH, cache=CACHE)
def _sum(e):
    s = ZERO
    for c in range(e.shape[0]):
        s += e[c]
    return s


@njit(fastmath=FASTMATH, cache=CACHE)
def _weight_and_gap_sums(z, w, m):
    """(sum_c w_c, sum_c w_c (m - z_c)); w_c = 1 when ``w`` is empty."""
    total, gap = ZERO * m, ZERO * m
    if w.shape[0] == 0:
        for c in range(z.shape[0]):
            total += ONE
            gap += m - z[c]
        return total, gap
    for c in range(z.shape[0]):
        total += w[c]
        gap += w[c] * (m - z[c])
    return total, gap


@njit(fastmath=FASTMATH, cache=CACHE)
def _soft_sums(z, t, w, m, keep, eps_c):
    """(A, B) = (sum_c a_c, sum_c a_c (m - z_c)), a_c = w_c (keep t_c + eps / C)."""
    a_sum, gap = ZERO * m, ZERO * m
    for c in range(z.shape[0]):
        a = keep * t[c] + eps_c
        if w.shape[0]:
            a *= w[c]
        a_sum += a
        gap += a * (m - z[c])
    return a_sum, gap


@njit(cache=CACHE, inline="always")  # an elementwise loop: vectorises without fastmath
def _write_label_grad(e, w, k_p, k_w, weighted, grad):
    """grad_c = k_p e_c - k_w w_c (the true class is overwritten by the caller).

    Without ``weighted`` (no weights, or no smoothing: ``k_w`` is 0), ``w`` is not read, so
    an inf or NaN weight of a class the row does not use cannot reach its gradient.
    """
    if not weighted:
        for c in range(e.shape[0]):
            grad[c] = k_p * e[c] - k_w
    else:
        for c in range(e.shape[0]):
            grad[c] = k_p * e[c] - k_w * w[c]


@njit(fastmath=FASTMATH, cache=CACHE)
def _write_soft_grad(e, t, w, k_p, g, keep, eps_c, grad):
    """grad_c = k_p e_c - g a_c."""
    for c in range(e.shape[0]):
        a = keep * t[c] + eps_c
        if w.shape[0]:
            a *= w[c]
        grad[c] = k_p * e[c] - g * a


@njit(cache=CACHE)
def label_row(z, y, w, g, ignore_index, eps, eps_c, z_loss, e, grad):
    """Loss of one row ``z`` with class index ``y``; writes its gradient ``g (A' p - a)``.

    ``w`` the class weights (empty: 1), ``eps`` the smoothing and ``eps_c = eps / C``,
    ``z_loss`` the factor of ``lse^2``, ``e`` scratch of ``z``'s length. An ignored row has
    loss 0, a ``y`` outside ``[0, C)`` NaN; both get a zero gradient. Otherwise see
    :func:`label_finish`.
    """
    if not valid_label(y, ignore_index, z.shape[0]):
        return skipped_row(y, ignore_index, g, grad)
    m = _row_max(z)
    _exp_shifted(z, m, e)
    return label_finish(z, y, w, g, eps, eps_c, z_loss, m, _sum(e), e, grad)


@njit(cache=CACHE, inline="always")
def valid_label(y, ignore_index, num_classes):
    """Whether class index ``y`` takes part: not ignored and in ``[0, C)``."""
    return y != ignore_index and 0 <= y < num_classes


@njit(cache=CACHE, inline="always")
def skipped_row(y, ignore_index, g, grad):
    """A row that takes no part: zero gradient; loss 0 if ignored, NaN if out of range."""
    grad[:] = 0
    return (ZERO if y == ignore_index else _NAN) * g


@njit(cache=CACHE, inline="always")
def label_finish(z, y, w, g, eps, eps_c, z_loss, m, s, e, grad):
    """The loss of a row with class index ``y`` from its max ``m``, ``e = exp(z - m)`` and
    ``s = sum e``; writes its gradient ``g (A' e / s - a)``.

    The loss is ``(1 - eps) w_y ((m - z_y) + log s) + eps_c sum_c w_c ((m - z_c) + log s) +
    z_loss lse^2`` with ``lse = m + log s``: ``m - z_y`` is exact for the large logits that
    matter, so no precision is lost to the magnitude of ``m``. ``A = (1 - eps) w_y + eps_c
    sum_c w_c`` and ``A' = A + 2 z_loss lse``.
    """
    z_y = z[y]
    w_y = w[y] if w.shape[0] else ONE
    w_sum, gap = _weight_and_gap_sums(z, w, m) if eps > 0 else (ZERO * m, ZERO * m)
    log_s = math.log(s)
    keep = ONE - eps
    a_sum = keep * w_y + eps_c * w_sum
    loss = keep * w_y * (m - z_y + log_s) + eps_c * (w_sum * log_s + gap)
    if z_loss > 0:
        lse = m + log_s
        loss += z_loss * lse * lse
        a_sum += (z_loss + z_loss) * lse
    p_scale = a_sum / s  # one division a row: p_c A = e_c (A / s)
    _write_label_grad(e, w, g * p_scale, g * eps_c, eps > 0 and w.shape[0] > 0, grad)
    # p_y - a_y in the accumulation dtype, rounded once into grad.
    grad[y] = g * (p_scale * e[y] - (keep * w_y + eps_c * w_y))
    return loss


@njit(cache=CACHE)
def _exp_in_place(e):
    """e = exp(e), one flat loop: vectorised across the rows of a block of short rows."""
    for k in range(e.shape[0]):
        e[k] = fast_exp(e[k])


@njit(cache=CACHE)
def _short_rows(z, labels, w, scale, grad, row_loss, lo, hi, args, e, m):
    """Rows ``lo:hi`` of short rows, ``SHORT_BLOCK`` at a time: each block's maxima, then the
    shifted logits of all its rows in ``e`` and one flat ``exp`` over them (a loop over 10
    classes a row does not vectorise; one over 64 rows of them does), then each row's
    :func:`label_finish`. ``scale`` is ``(upstream, divisor, mean)`` (:func:`row_scale`),
    ``args`` ``(ignore_index, eps, eps_c, z_loss)``."""
    upstream, divisor, mean = scale
    ignore_index, eps, eps_c, z_loss = args
    c = z.shape[1]
    for b in range(lo, hi, SHORT_BLOCK):
        rows = min(hi, b + SHORT_BLOCK) - b
        for r in range(rows):
            m[r] = _short_max(z[b + r])
            _shift(z[b + r], m[r], e[r * c : (r + 1) * c])
        _exp_in_place(e[: rows * c])
        for r in range(rows):
            i = b + r
            y = labels[i]
            g = row_scale(upstream, i, divisor, mean)
            if valid_label(y, ignore_index, c):
                e_r = e[r * c : (r + 1) * c]
                s = _short_sum(e_r)
                loss = label_finish(z[i], y, w, g, eps, eps_c, z_loss, m[r], s, e_r, grad[i])
            else:
                loss = skipped_row(y, ignore_index, g, grad[i])
            row_loss[i] = loss


# Short rows' max and sum, inlined scalar loops: a vectorised loop of a handful of elements
# costs more in its set-up than it saves.
@njit(cache=CACHE, inline="always")
def _short_max(z):
    m = z[0]
    for c in range(1, z.shape[0]):
        m = z[c] if z[c] > m else m
    return m


@njit(cache=CACHE, inline="always")
def _short_sum(e):
    s = e[0]
    for c in range(1, e.shape[0]):
        s += e[c]
    return s


@njit(cache=CACHE, inline="always")
def _shift(z, m, out):
    for c in range(z.shape[0]):
        out[c] = z[c] - m


@njit(cache=CACHE, inline="always")
def row_scale(upstream, i, divisor, mean):
    """Row ``i``'s factor of the gradient: the upstream gradient, over the divisor for a
    mean (the same ``u / d`` for every row)."""
    return at(upstream, i) / divisor if mean else at(upstream, i)


@njit(cache=CACHE)
def capped(z, cap, zc):
    """``zc = cap tanh(z / cap)``: the logits after softcapping (also ``composite``'s)."""
    for c in range(z.shape[0]):
        zc[c] = cap * math.tanh(z[c] / cap)


@njit(cache=CACHE)
def through_cap(zc, cap, grad):
    """The chain rule through the cap: d zc / dz = 1 - tanh^2 = 1 - (zc / cap)^2."""
    for c in range(zc.shape[0]):
        r = zc[c] / cap
        grad[c] *= ONE - r * r


@ParallelKernel
def _labels_kernel(
    logits, labels, w, upstream, grad, row_loss, loss, bad, options, cap, reduction, chunk
):
    n, c = logits.shape
    acc = row_loss.dtype.type  # the options come as Python numbers: a cheaper dispatch
    ignore_index, eps, eps_c, z_loss = options
    eps, eps_c, z_loss, cap = acc(eps), acc(eps_c), acc(z_loss), acc(cap)
    args = (ignore_index, eps, eps_c, z_loss)
    mean = reduction == MEAN
    # the labels first: the first bad one, and for a mean the row weights (in row_loss)
    bad[0], rows = _scan_labels(labels, w, row_loss, ignore_index, c, mean)
    one = np.ones(1, row_loss.dtype)[0]
    divisor = _label_divisor(row_loss, rows, w.shape[0] > 0) if mean else one
    short = c <= SHORT_ROW and cap == 0
    for b in prange((n + chunk - 1) // chunk):
        lo, hi = b * chunk, min(n, (b + 1) * chunk)
        if short:
            e = np.empty(SHORT_BLOCK * c, row_loss.dtype)
            m = np.empty(SHORT_BLOCK, row_loss.dtype)
            scale = (upstream, divisor, mean)
            _short_rows(logits, labels, w, scale, grad, row_loss, lo, hi, args, e, m)
            continue
        e = np.empty(c, row_loss.dtype)
        zc = np.empty(c if cap > 0 else 0, row_loss.dtype)
        for i in range(lo, hi):
            g, y = row_scale(upstream, i, divisor, mean), labels[i]
            if cap > 0:
                capped(logits[i], cap, zc)
                row_loss[i] = label_row(zc, y, w, g, ignore_index, eps, eps_c, z_loss, e, grad[i])
                through_cap(zc, cap, grad[i])
            else:
                row_loss[i] = label_row(
                    logits[i], y, w, g, ignore_index, eps, eps_c, z_loss, e, grad[i]
                )
    if reduction >= SUM:
        total = canonical_total(row_loss)
        loss[0] = total / divisor if mean else total


@njit(cache=CACHE)
def _scan_labels(labels, w, row_weight, ignore_index, num_classes, mean):
    """(first row whose label is neither ignored nor in ``[0, C)``, or -1; rows taking
    part). With ``mean``, ``row_weight[i]`` = the class weight of row ``i`` (1 without
    weights), 0 for a row that takes no part."""
    first, rows = -1, 0
    for i in range(labels.shape[0]):
        y = labels[i]
        valid = valid_label(y, ignore_index, num_classes)
        if not valid and y != ignore_index and first < 0:
            first = i
        rows += valid
        if mean:
            row_weight[i] = row_weight_of(y, w, ignore_index, num_classes)
    return first, rows


@njit(cache=CACHE, inline="always")
def row_weight_of(y, w, ignore_index, num_classes):
    """The class weight of label ``y`` (1 without weights); 0 if it takes no part."""
    if not valid_label(y, ignore_index, num_classes):
        return ZERO
    return w[y] if w.shape[0] else ONE


@njit(cache=CACHE)
def _label_divisor(row_weight, rows, weighted):
    """The mean's divisor: the canonical sum of the row weights; 1 when no row takes part
    (the mean is 0), NaN when weighted rows' weights sum to 0 (PyTorch's 0/0)."""
    total = canonical_total(row_weight)
    if rows == 0:
        return total + ONE  # total is 0: no row has a weight
    if weighted and total == 0:
        return total + _NAN
    return total


@njit(cache=CACHE)
def soft_row(z, t, w, g, keep, eps_c, z_loss, e, grad):
    """Loss of one row ``z`` with class probabilities ``t``; writes its gradient
    ``g (A' p - a)``, ``a_c = w_c (keep t_c + eps_c)``, ``A = sum_c a_c``,
    ``A' = A + 2 z_loss lse``. The loss is ``sum_c a_c ((m - z_c) + log s)`` (the gap sum
    and ``A log s``) plus ``z_loss lse^2``."""
    m = _row_max(z)
    a_sum, gap = _soft_sums(z, t, w, m, keep, eps_c)
    _exp_shifted(z, m, e)
    s = _sum(e)
    log_s = math.log(s)
    loss = a_sum * log_s + gap
    k_p = a_sum
    if z_loss > 0:
        lse = m + log_s
        loss += z_loss * lse * lse
        k_p += (z_loss + z_loss) * lse
    _write_soft_grad(e, t, w, g * k_p / s, g, keep, eps_c, grad)
    return loss


@ParallelKernel
def _probs_kernel(
    logits, target, w, upstream, grad, row_loss, loss, keep, eps_c, z_loss, cap, reduction, chunk
):
    n, c = logits.shape
    acc = row_loss.dtype.type  # the options come as Python numbers: a cheaper dispatch
    keep, eps_c, z_loss, cap = acc(keep), acc(eps_c), acc(z_loss), acc(cap)
    mean = reduction == MEAN
    divisor = np.full(1, n, row_loss.dtype)[0]  # the mean's divisor
    for b in prange((n + chunk - 1) // chunk):
        e = np.empty(c, row_loss.dtype)
        zc = np.empty(c if cap > 0 else 0, row_loss.dtype)
        for i in range(b * chunk, min(n, (b + 1) * chunk)):
            g, t = row_scale(upstream, i, divisor, mean), target[i]
            if cap > 0:
                capped(logits[i], cap, zc)
                loss_i = soft_row(zc, t, w, g, keep, eps_c, z_loss, e, grad[i])
                through_cap(zc, cap, grad[i])
            else:
                loss_i = soft_row(logits[i], t, w, g, keep, eps_c, z_loss, e, grad[i])
            row_loss[i] = loss_i
    if reduction >= SUM:
        total = canonical_total(row_loss)
        loss[0] = total / divisor if mean else total


@ParallelKernel
def _row_weights_kernel(labels, w, row_weight, ignore_index, num_classes):
    for i in prange(labels.shape[0]):
        row_weight[i] = row_weight_of(labels[i], w, ignore_index, num_classes)


def label_row_weights(labels, weight, row_weight, ignore_index, num_classes):
    """row_weight[i] = weight[labels[i]] (1 without weights); 0 if ignored or out of range."""
    _row_weights_kernel(labels, weight, row_weight, ignore_index, num_classes, work=labels.size)


def softmax_xent_labels(
    logits,
    labels,
    weight,
    grad_scale,
    grad,
    row_loss,
    loss,
    bad,
    ignore_index,
    smoothing,
    z_loss,
    softcap,
    reduction,
):
    """Fused CE with class indices and its reduction, in one compiled call (contract in
    docs/BACKENDS.md); ``softcap`` 0 for none."""
    n, c = logits.shape
    buffer = output_view(grad)
    _labels_kernel(
        compute_view(logits),
        labels,
        weight,
        optional(grad_scale),
        buffer,
        row_loss,
        loss,
        bad,
        (ignore_index, float(smoothing), smoothing / c, float(z_loss)),
        float(softcap),
        reduction,
        work=logits.size,
        items=n,
    )
    store(buffer, grad)


def softmax_xent_probs(
    logits, target, weight, grad_scale, grad, row_loss, loss, smoothing, z_loss, softcap, reduction
):
    """Fused CE with class probabilities and its reduction, in one compiled call (contract
    in docs/BACKENDS.md); ``softcap`` 0 for none."""
    n, c = logits.shape
    buffer = output_view(grad)
    _probs_kernel(
        compute_view(logits),
        target.astype(row_loss.dtype, copy=False),
        weight,
        optional(grad_scale),
        buffer,
        row_loss,
        loss,
        1.0 - smoothing,
        smoothing / c,
        float(z_loss),
        float(softcap),
        reduction,
        work=logits.size,
        items=n,
    )
    store(buffer, grad)
