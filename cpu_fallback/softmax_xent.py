"""Fused softmax cross-entropy on the CPU: loss and gradient per row, rows in parallel.

Rows go in blocks of up to 256 (``label_block``; fewer for long rows, so that a block's
exponentials stay in L1): each row's max; ``e = exp(z - max)`` into the block's scratch (the
only ``exp`` of each element, vectorised by ``fast_exp``: along a long row, across the block
for short ones); the sums of ``e`` and their logs; then each row's loss and gradient
``g (A e / s - a)`` (``label_rows``). Class probabilities take the same blocks for short rows
(``soft_rows``) and go one row at a time otherwise (``soft_row``; ``soft_block`` picks). The
loss terms read the logits before the gradient is written, so ``grad`` may be the logits
themselves. bfloat16 logits (their bits) are widened a block at a time into float32 scratch,
and the block's gradients rounded from scratch into ``grad`` (``rows_in``, ``rows_out``,
``flush_rows``). See docs/BACKENDS.md.
"""

import math

import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from gpukernels._kinds import MEAN, SUM
from gpukernels._scalar import ONE, ZERO

from . import (
    CACHE,
    at,
    compute_view,
    flush_rows,
    holds_bits,
    load,
    optional,
    output_view,
    parallel_kernel,
    rows_in,
    rows_out,
    store,
)
from ._cache import njit
from ._math import fast_exp, fast_log, key_value, order_key
from .reduce import canonical_total, floats_1d, lane_sum, lane_sums, read, splat

_NAN = np.float32(np.nan)
FOLD_MAX = 128  # classes a row at most to be folded four rows at a time (_fold_rows)
# rows a block at most: 1000 x 10 took 23 us in blocks of 256 against 25 us in blocks of 64
# (each block costs a few calls with a dozen arguments)
BLOCK_ROWS = 256
BLOCK_ELEMENTS = 1 << 12  # elements a block at most: its exponentials stay in L1


@njit(cache=CACHE)
def _row_max(z):
    """The largest of the ``C >= 1`` values of ``z`` in IEEE's total order (over
    :func:`order_key`s, a vectorised integer max: 7x faster at 256 classes than the float
    compare-and-select, which LLVM keeps scalar). Any order of the values gives the same
    max; a NaN in the row makes the row NaN later (``exp(z_c - m)``), whatever ``m`` is."""
    k = order_key(z[0])
    for c in range(1, z.shape[0]):
        v = order_key(z[c])
        k = v if v > k else k
    return key_value(k)


# Inlined (Numba IR) into the row functions, which have no fastmath: it would reassociate
# fast_exp's range reduction. Inlining saves a call per row, which short rows feel.
@njit(cache=CACHE, inline="always")
def _exp_shifted(z, m, e):
    for c in range(z.shape[0]):
        e[c] = fast_exp(z[c] - m)


# The sums along a row are taken in an order set by the row's length alone, written out so
# that no compiler may reorder them: with fast-math reassociation LLVM chose the order, and
# chose differently where a kernel was compiled and where it was loaded from Numba's cache
# (1-2 ulp apart in some rows). A row's sum is reduce.lane_sum; the sums of the terms of
# soft targets and smoothing (:func:`_pair_sums`) are taken in its order too.
@intrinsic
def _pair_sums(typingctx, z, t, w, m, keep, eps_c):
    """``(sum_c a_c, sum_c a_c (m - z_c))`` over the row ``z``, each in
    :func:`~cpu_fallback.reduce.lane_sum`'s order: ``a_c = keep t_c + eps_c``, or 1 where
    ``t`` is None, times ``w_c`` unless ``w`` is None. Vector IR, as ``lane_sum``: with eight
    lanes written out in Python (LLVM kept them scalar) the class-probability loss ran 1.3-1.6x
    slower than with these (float32, 8192 x 256 to 2048 x 32768)."""
    if not isinstance(m, types.Float):
        return None
    rows = [a for a in (z, t, w) if not isinstance(a, types.NoneType)]
    exact = [isinstance(v, types.Float) and v.bitwidth <= m.bitwidth for v in (keep, eps_c)]
    if not (all(floats_1d(a) and a.dtype == m for a in rows) and all(exact)):
        return None  # keep and eps_c are widened exactly to m's type, or refused

    def codegen(context, builder, signature, args):
        arrays = {
            name: (kind, context.make_array(kind)(context, builder, value))
            for name, kind, value in zip("ztw", signature.args, args, strict=False)
            if not isinstance(kind, types.NoneType)
        }
        scalars = args[3:]

        def terms(c, k):
            m_k, keep_k, eps_k = (splat(builder, v, k) for v in scalars)
            z_c = read(builder, *arrays["z"], c, k)
            if "t" in arrays:
                a = builder.fadd(builder.fmul(keep_k, read(builder, *arrays["t"], c, k)), eps_k)
            else:
                a = splat(builder, context.get_constant(m, 1), k)
            if "w" in arrays:
                a = builder.fmul(a, read(builder, *arrays["w"], c, k))
            return [a, builder.fmul(a, builder.fsub(m_k, z_c))]

        n = builder.extract_value(arrays["z"][1].shape, 0)
        sums = lane_sums(context, builder, n, m, 2, terms)
        return context.make_tuple(builder, signature.return_type, sums)

    return types.UniTuple(m, 2)(z, t, w, m, m, m), codegen


@njit(cache=CACHE)
def _weight_and_gap_sums(z, w, m):
    """(sum_c w_c, sum_c w_c (m - z_c)); w_c = 1 when ``w`` is empty."""
    if w.shape[0]:
        return _pair_sums(z, None, w, m, m, m)
    return _pair_sums(z, None, None, m, m, m)


@njit(cache=CACHE)
def _soft_sums(z, t, w, m, keep, eps_c):
    """(A, B) = (sum_c a_c, sum_c a_c (m - z_c)), a_c = w_c (keep t_c + eps / C)."""
    if w.shape[0]:
        return _pair_sums(z, t, w, m, keep, eps_c)
    return _pair_sums(z, t, None, m, keep, eps_c)


@njit(cache=CACHE)
def _write_soft_grad(e, t, w, k_p, g, keep, eps_c, grad, row):
    """grad[row, c] = k_p e_c - g a_c (nothing where ``grad`` is None)."""
    if grad is None:
        return
    out = grad[row]
    for c in range(e.shape[0]):
        a = keep * t[c] + eps_c
        if w.shape[0]:
            a *= w[c]
        out[c] = k_p * e[c] - g * a


@njit(cache=CACHE, inline="always")
def valid_label(y, ignore_index, num_classes):
    """Whether class index ``y`` takes part: not ignored and in ``[0, C)``."""
    return y != ignore_index and 0 <= y < num_classes


@njit(cache=CACHE)
def label_rows(z, z_lo, labels, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss):
    """Rows ``lo:lo + rows`` with class indices, from their logits ``z[z_lo + r]``,
    ``stats[:, r] = (m, s, log s)`` (the max, the sum of ``e[r] = exp(z[z_lo + r] - m)``, its
    log): row ``i = lo + r``'s loss into ``row_loss[i]`` and its gradient ``g (A' p - a)``
    into ``grad[g_lo + r]`` (none where ``grad`` is None: the loss alone).

    ``labels[i]`` is the row's class index ``y``, ``w`` the class weights (empty: 1),
    ``scale`` ``(upstream, divisor, mean)`` (:func:`row_scale` gives ``g``) and ``args``
    ``(ignore_index, eps, eps_c, z_loss)``: the smoothing and ``eps / C``, the factor of
    ``lse^2``. An ignored row has loss 0, a ``y`` outside ``[0, C)`` NaN; both get a zero
    gradient (whatever the upstream gradient: the loss does not depend on it). Otherwise
    the loss is ``(1 - eps) w_y ((m - z_y) + log s) + eps_c sum_c w_c
    ((m - z_c) + log s) + z_loss lse^2`` with ``lse = m + log s``: ``m - z_y`` is exact for
    the large logits that matter, so no precision is lost to the magnitude of ``m``.
    ``A = (1 - eps) w_y + eps_c sum_c w_c``, ``A' = A + 2 z_loss lse`` and ``a_c = (1 - eps)
    w_y [c = y] + eps_c w_c``; ``A' p_c`` is ``e_c (A' / s)``, one division a row.

    Rows are arrays and indices, not views: Numba counts the references to a view's parent,
    which costs a short row as much as its arithmetic. Without smoothing and weights ``w`` is
    not read, so an inf or NaN weight of a class the row does not use cannot reach its
    gradient.
    """
    upstream, divisor, mean = scale
    ignore_index, eps, eps_c, z_loss = args
    c, keep, weighted = z.shape[1], ONE - eps, eps > 0 and w.shape[0] > 0
    for r in range(rows):
        i, zi, gi = lo + r, z_lo + r, g_lo + r
        y, g = labels[i], row_scale(upstream, i, divisor, mean)
        if not valid_label(y, ignore_index, c):
            row_loss[i] = ZERO if y == ignore_index else _NAN
            if grad is not None:
                grad[gi] = 0
            continue
        m_r, log_s = stats[0, r], stats[2, r]
        w_y = w[y] if w.shape[0] else ONE
        w_sum, gap = _weight_and_gap_sums(z[zi], w, m_r) if eps > 0 else (ZERO * m_r, ZERO * m_r)
        a_sum = keep * w_y + eps_c * w_sum
        loss = keep * w_y * (m_r - z[zi, y] + log_s) + eps_c * (w_sum * log_s + gap)
        if z_loss > 0:
            lse = m_r + log_s
            loss += z_loss * lse * lse
            a_sum += (z_loss + z_loss) * lse
        row_loss[i] = loss  # the logits were read: grad may be them
        if grad is None:
            continue
        p_scale = a_sum / stats[1, r]
        k_p, k_w = g * p_scale, g * eps_c
        if weighted:
            for k in range(c):
                grad[gi, k] = k_p * e[r, k] - k_w * w[k]
        else:
            for k in range(c):
                grad[gi, k] = k_p * e[r, k] - k_w
        # p_y - a_y formed in the accumulation dtype, rounded once into grad
        grad[gi, y] = g * (p_scale * e[r, y] - (keep * w_y + eps_c * w_y))


@njit(cache=CACHE)
def _exp_in_place(e):
    """e = exp(e), one flat loop: vectorised across the rows of a block of short rows."""
    for k in range(e.shape[0]):
        e[k] = fast_exp(e[k])


@njit(cache=CACHE)
def label_block(z, z_lo, labels, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss):
    """Rows ``lo:lo + rows`` (logits ``z[z_lo + r]``, labels ``labels[lo + r]``, gradients
    ``grad[g_lo + r]``): their maxima, exponentials ``e``, sums and the sums' logs (``stats``,
    ``(3, rows)`` or more), then :func:`label_rows`. Also the composite loss's CE term, as a
    block of one row.

    Rows of at most ``FOLD_MAX`` classes go through :func:`short_row_stats` (rows that take
    no part are computed too and ignored). Longer rows use loops along the row, and a row
    that takes no part gets none. Either way a row's max and sum are formed in an order set
    by its length alone.
    """
    c = z.shape[1]
    if c <= FOLD_MAX:
        short_row_stats(z, z_lo, rows, stats, e)
    else:
        for r in range(rows):
            if valid_label(labels[lo + r], args[0], c):
                row = z[z_lo + r]
                stats[0, r] = _row_max(row)
                _exp_shifted(row, stats[0, r], e[r])
                stats[1, r] = lane_sum(e[r])
                stats[2, r] = fast_log(stats[1, r])
    label_rows(z, z_lo, labels, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss)


@njit(cache=CACHE)
def short_row_stats(z, z_lo, rows, stats, e):
    """``stats[:, r] = (m, s, log s)`` and ``e[r] = exp(z[z_lo + r] - m)`` for rows of at most
    ``FOLD_MAX`` classes: folded four rows at a time (:func:`_fold_rows`) and exponentiated in
    one flat loop over the block (a loop over 10 classes does not vectorise, one over 256 rows
    of them does). Each row is folded left to right, as a loop along it would."""
    c = z.shape[1]
    m = stats[0]
    _fold_rows(z, z_lo, rows, m, _keep_max)
    for r in range(rows):
        for k in range(c):
            e[r, k] = z[z_lo + r, k] - m[r]
    _exp_in_place(e.reshape(e.size)[: rows * c])
    _fold_rows(e, 0, rows, stats[1], _add)
    for r in range(rows):
        stats[2, r] = fast_log(stats[1, r])  # vectorised across the block


@njit(cache=CACHE, inline="always")
def _fold_rows(a, lo, rows, out, op):
    """``out[r] = op(..op(op(a[i, 0], a[i, 1]), a[i, 2]).., a[i, C-1])`` for ``i = lo + r``:
    each row folded left to right, as one row's loop would, but four rows at a time, so that
    their chains of dependent operations (a handful of elements each: too few to vectorise)
    overlap."""
    c = a.shape[1]
    r = 0
    while r + 4 <= rows:
        i = lo + r
        f0, f1, f2, f3 = a[i, 0], a[i + 1, 0], a[i + 2, 0], a[i + 3, 0]
        for k in range(1, c):
            f0, f1 = op(f0, a[i, k]), op(f1, a[i + 1, k])
            f2, f3 = op(f2, a[i + 2, k]), op(f3, a[i + 3, k])
        out[r], out[r + 1], out[r + 2], out[r + 3] = f0, f1, f2, f3
        r += 4
    for tail in range(r, rows):
        f = a[lo + tail, 0]
        for k in range(1, c):
            f = op(f, a[lo + tail, k])
        out[tail] = f


@njit(cache=CACHE, inline="always")
def _keep_max(m, v):
    """The float max, for short rows folded four at a time: there it is faster than
    :func:`_row_max`'s keys (at 10 classes 0.20 against 0.29 ns an element, folded on keys).
    The two can differ only in which of -0 and +0 a tie keeps, or in a NaN; neither changes
    a row's loss or gradient (``exp(z - m)``, ``m - z_y + log s`` and ``m + log s`` come out
    the same, and a NaN makes the row NaN)."""
    return v if v > m else m


@njit(cache=CACHE, inline="always")
def _add(s, v):
    return s + v


@njit(cache=CACHE, inline="always")
def row_scale(upstream, i, divisor, mean):
    """Row ``i``'s factor of the gradient: the upstream gradient, over the divisor for a
    mean (the same ``u / d`` for every row)."""
    return at(upstream, i) / divisor if mean else at(upstream, i)


@njit(cache=CACHE)
def capped(z, cap, zc):
    """``zc = cap tanh(z / cap)``: the logits after softcapping (also ``composite``'s and
    ``shard``'s; bfloat16 bits widened first)."""
    for c in range(z.shape[0]):
        zc[c] = cap * math.tanh(load(z, c) / cap)


@njit(cache=CACHE)
def through_cap(zc, cap, grad):
    """The chain rule through the cap: d zc / dz = 1 - tanh^2 = 1 - (zc / cap)^2."""
    for c in range(zc.shape[0]):
        r = zc[c] / cap
        grad[c] *= ONE - r * r


@njit(cache=CACHE)
def rows_through_cap(zc, cap, grad, g_lo, rows, labels, lo, ignore_index):
    """:func:`through_cap` of the capped rows ``zc[r]`` into ``grad[g_lo + r]``, ``r <
    rows``, but for rows whose class index ``labels[lo + r]`` takes no part (their gradient
    stays 0; ``labels`` None: every row takes part); nothing where ``grad`` is None."""
    if grad is None:
        return
    for r in range(rows):
        if labels is None or valid_label(labels[lo + r], ignore_index, zc.shape[1]):
            through_cap(zc[r], cap, grad[g_lo + r])


@njit(cache=CACHE, inline="always")
def rows_a_block(c):
    """Rows a block of ``c`` classes: up to ``BLOCK_ROWS``, fewer for long rows, so that the
    block's exponentials (``BLOCK_ELEMENTS`` at most) stay in L1."""
    return max(1, min(BLOCK_ROWS, BLOCK_ELEMENTS // max(c, 1)))


@njit(cache=CACHE, inline="always")
def logit_rows(logits, lo, rows, cap, zc):
    """Rows ``lo:lo + rows`` of the logits to compute with, as ``(array, first row)``: capped
    into the scratch ``zc`` with a cap, else as :func:`rows_in` gives them."""
    if cap > 0:
        for r in range(rows):
            capped(logits[lo + r], cap, zc[r])
        return zc, 0
    return rows_in(logits, lo, rows, zc)


@parallel_kernel
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
    scale = (upstream, divisor, mean)
    block = rows_a_block(c)
    bits = holds_bits(logits)  # bfloat16 logits: rows widened into zc
    for b in prange((n + chunk - 1) // chunk):
        stats = np.empty((3, block), row_loss.dtype)
        e = np.empty((block, c), row_loss.dtype)
        zc = np.empty((block if cap > 0 or bits else 0, c), row_loss.dtype)  # rows computed
        gc = np.empty((block if holds_bits(grad) else 0, c), row_loss.dtype)  # for rows_out
        hi = min(n, (b + 1) * chunk)
        for lo in range(b * chunk, hi, block):
            rows = min(hi, lo + block) - lo
            z, z_lo = logit_rows(logits, lo, rows, cap, zc)
            out, out_lo = rows_out(grad, lo, gc)
            label_block(z, z_lo, labels, lo, rows, w, scale, args, stats, e, out, out_lo, row_loss)
            if cap > 0:
                rows_through_cap(zc, cap, out, out_lo, rows, labels, lo, ignore_index)
            flush_rows(gc, grad, lo, rows)
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


@njit(cache=CACHE, inline="always")
def _soft_finish(t, w, g, keep, eps_c, z_loss, sums, m, s, log_s, e, grad, row):
    """Loss of a row with class probabilities ``t``, from ``sums = (A, B)`` of
    :func:`_soft_sums`, its max ``m``, ``e = exp(z - m)``, ``s = sum e`` and ``log s``; writes
    its gradient into ``grad[row]`` (unless ``grad`` is None), ``g (A' p - a)``, ``a_c = w_c
    (keep t_c + eps_c)``, ``A = sum_c a_c``,
    ``A' = A + 2 z_loss lse``. The loss is ``sum_c a_c ((m - z_c) + log s)`` (the gap sum
    ``B`` and ``A log s``) plus ``z_loss lse^2``."""
    a_sum, gap = sums
    loss, k_p = a_sum * log_s + gap, a_sum
    if z_loss > 0:
        lse = m + log_s
        loss += z_loss * lse * lse
        k_p += (z_loss + z_loss) * lse
    _write_soft_grad(e, t, w, g * k_p / s, g, keep, eps_c, grad, row)
    return loss


@njit(cache=CACHE)
def soft_row(z, t, w, g, keep, eps_c, z_loss, e, grad, row):
    """Loss of one (long) row ``z`` with class probabilities ``t``; its gradient into
    ``grad[row]`` (:func:`_soft_finish`), ``e`` scratch. The sums over ``z`` and ``t`` are taken
    right after the max, while a long row is still in L1."""
    m = _row_max(z)
    sums = _soft_sums(z, t, w, m, keep, eps_c)
    _exp_shifted(z, m, e)
    s = lane_sum(e)
    return _soft_finish(t, w, g, keep, eps_c, z_loss, sums, m, s, math.log(s), e, grad, row)


@njit(cache=CACHE)
def soft_rows(z, z_lo, t, t_lo, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss):
    """Short rows ``lo:lo + rows`` with class probabilities ``t[t_lo + r]``, from their logits
    ``z[z_lo + r]`` and :func:`short_row_stats`' ``stats`` and ``e``: row ``i = lo + r``'s
    loss into ``row_loss[i]`` and its gradient into ``grad[g_lo + r]`` (:func:`_soft_finish`).
    ``scale`` is ``(upstream, divisor, mean)`` as in :func:`label_rows`, ``args``
    ``(keep, eps_c, z_loss)``."""
    upstream, divisor, mean = scale
    keep, eps_c, z_loss = args
    for r in range(rows):
        i, m, s, log_s = lo + r, stats[0, r], stats[1, r], stats[2, r]
        g, t_r = row_scale(upstream, i, divisor, mean), t[t_lo + r]
        sums = _soft_sums(z[z_lo + r], t_r, w, m, keep, eps_c)
        row_loss[i] = _soft_finish(
            t_r, w, g, keep, eps_c, z_loss, sums, m, s, log_s, e[r], grad, g_lo + r
        )


@njit(cache=CACHE)
def soft_block(z, z_lo, t, t_lo, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss):
    """Rows ``lo:lo + rows`` with class probabilities, as :func:`soft_rows` takes them: short
    rows (at most ``FOLD_MAX`` classes) through :func:`short_row_stats` and
    :func:`soft_rows`, longer ones one at a time through :func:`soft_row`. Also the composite
    loss's soft CE term, as a block of one row, so that it has the single CE's bits."""
    if z.shape[1] <= FOLD_MAX:
        short_row_stats(z, z_lo, rows, stats, e)
        soft_rows(z, z_lo, t, t_lo, lo, rows, w, scale, args, stats, e, grad, g_lo, row_loss)
        return
    upstream, divisor, mean = scale
    keep, eps_c, z_loss = args
    for r in range(rows):
        g = row_scale(upstream, lo + r, divisor, mean)
        row_loss[lo + r] = soft_row(
            z[z_lo + r], t[t_lo + r], w, g, keep, eps_c, z_loss, e[r], grad, g_lo + r
        )


@parallel_kernel
def _probs_kernel(
    logits, target, w, upstream, grad, row_loss, loss, keep, eps_c, z_loss, cap, reduction, chunk
):
    n, c = logits.shape
    acc = row_loss.dtype.type  # the options come as Python numbers: a cheaper dispatch
    keep, eps_c, z_loss, cap = acc(keep), acc(eps_c), acc(z_loss), acc(cap)
    mean, args = reduction == MEAN, (keep, eps_c, z_loss)
    divisor = np.full(1, n, row_loss.dtype)[0]  # the mean's divisor
    scale = (upstream, divisor, mean)
    block = rows_a_block(c) if c <= FOLD_MAX else 1  # long rows: one at a time (soft_row)
    bits = holds_bits(logits)  # bfloat16 logits: rows widened into zc
    for b in prange((n + chunk - 1) // chunk):
        stats = np.empty((3, block), row_loss.dtype)
        e = np.empty((block, c), row_loss.dtype)
        zc = np.empty((block if cap > 0 or bits else 0, c), row_loss.dtype)  # rows computed
        tc = np.empty((block if holds_bits(target) else 0, c), row_loss.dtype)
        gc = np.empty((block if holds_bits(grad) else 0, c), row_loss.dtype)  # for rows_out
        hi = min(n, (b + 1) * chunk)
        # short rows in blocks, as class indices; long ones one at a time through soft_row
        # itself, each branch with its own row array (through soft_block, or with one array
        # for both as logit_rows gives, they ran 5-20% slower at 256 classes)
        if c <= FOLD_MAX:
            for lo in range(b * chunk, hi, block):
                rows = min(hi, lo + block) - lo
                z, z_lo = logit_rows(logits, lo, rows, cap, zc)
                t, t_lo = rows_in(target, lo, rows, tc)
                out, out_lo = rows_out(grad, lo, gc)
                soft_block(
                    z, z_lo, t, t_lo, lo, rows, w, scale, args, stats, e, out, out_lo, row_loss
                )
                if cap > 0:
                    rows_through_cap(zc, cap, out, out_lo, rows, None, lo, 0)
                flush_rows(gc, grad, lo, rows)
        else:
            for i in range(b * chunk, hi):
                g = row_scale(upstream, i, divisor, mean)
                t, t_lo = rows_in(target, i, 1, tc)
                out, out_lo = rows_out(grad, i, gc)
                if cap > 0:
                    capped(logits[i], cap, zc[0])
                    loss_i = soft_row(zc[0], t[t_lo], w, g, keep, eps_c, z_loss, e[0], out, out_lo)
                    rows_through_cap(zc, cap, out, out_lo, 1, None, i, 0)
                else:
                    z, z_lo = rows_in(logits, i, 1, zc)
                    loss_i = soft_row(
                        z[z_lo], t[t_lo], w, g, keep, eps_c, z_loss, e[0], out, out_lo
                    )
                flush_rows(gc, grad, i, 1)
                row_loss[i] = loss_i
    if reduction >= SUM:
        total = canonical_total(row_loss)
        loss[0] = total / divisor if mean else total


@parallel_kernel
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
    docs/BACKENDS.md); ``softcap`` 0 for none, ``grad`` None for the loss alone."""
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
    in docs/BACKENDS.md); ``softcap`` 0 for none, ``grad`` None for the loss alone."""
    n, c = logits.shape
    buffer = output_view(grad)
    target = compute_view(target)  # bfloat16 as its bits, widened as the kernel reads them
    _probs_kernel(
        compute_view(logits),
        target if holds_bits(target) else target.astype(row_loss.dtype, copy=False),
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
