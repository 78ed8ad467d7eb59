r"""Softmax cross-entropy, loss and gradient in one kernel: a row per group of threads.

For a row ``z`` of ``C`` logits with max ``m``, :math:`s = \sum_c e^{z_c - m}`,
:math:`\mathrm{lse} = m + \log s` and :math:`p = e^{z - m} / s`, the target weights ``a``
(class weights ``w``, smoothing :math:`\varepsilon`) give

.. math::
    \ell = \sum_c a_c (\mathrm{lse} - z_c), \qquad
    \frac{\partial \ell}{\partial z} = A p - a, \quad A = \sum_c a_c,

with :math:`a_c = (1-\varepsilon) w_y [c = y] + \tfrac{\varepsilon}{C} w_c` for a class index
``y`` and :math:`a_c = w_c (t_c (1-\varepsilon) + \tfrac{\varepsilon}{C})` for probabilities
``t``. The gradient row is scaled by ``grad_scale`` (one value, or one per row).

A block is ``ry`` rows of ``tx`` threads (``gpukernels.cuda._cuda.row_shape``). Pass 1 reads each
logit once: an online max and rescaled sum of exponentials per thread (kept in shared memory
when the rows fit in 48 KB), reduced over the row. Pass 2 writes the gradient (from shared
memory, or re-reading the logits) and, with smoothing or probabilities, the loss sum. Every
thread runs every reduction (they synchronise), rows past ``N`` just compute nothing. A
``grad`` of no rows asks for the loss alone: pass 2 then writes nothing (and with class
indices and no smoothing is skipped).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda
from numba.core import types

from .._canon import TILE
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
    grid_for,
    is_bf16,
    kernel_type,
    launch,
    row_shape,
    scratch,
    tickets,
    tile_grid,
)
from .reduce import (
    block_min,
    block_tile_sum,
    fold_partials,
    group_reducers,
    last_block,
    register_fold,
    total_divided,
)


def _batch(acc) -> int:
    """Loads of a row a thread issues in pass 1 before it consumes the first.

    A warp stalls at the first use of a load, so one load at a time leaves only a few KB in
    flight per SM, far below what DRAM needs to stream at full bandwidth. 16 bytes a thread
    (4 float32, 2 float64) quadruples that; more would cost occupancy (registers: 512-thread
    blocks must stay under 128 a thread, tests/test_ptx.py).
    """
    return 2 if acc == types.float64 else 4


@functools.cache
def row_maths(acc):
    """The softmax cross-entropy row maths as device functions, shared by every CE kernel
    (these and ``composite``'s):

    - ``online(m, s, z)``: the running max ``m`` and ``s = sum exp(z - m)`` after ``z``;
    - ``finish(m, s)``: ``(log s, 1 / s)`` of a row's max and sum; a NaN or ``+inf`` logit
      makes both NaN, a row of ``-inf`` gives ``(-inf, 0)``;
    - ``nll(m, z, log_s)``: ``-log p`` of a logit ``z``, as ``(m - z) + log s`` (``m - z`` is
      exact near the max, so large logits lose no precision to ``lse = m + log s``);
    - ``grad_value(g, big_a, z, m, inv, a)``: ``g (A p - a)`` with ``p = exp(z - m) / s``,
      formed in acc and rounded once when stored (``p_y - 1`` is never a 16-bit value);
    - ``capped(z, cap)``: the softcapped logit ``cap tanh(z / cap)`` (``z`` for ``cap`` 0),
      and ``cap_slope(zc, cap)``: its derivative ``1 - (zc / cap)^2`` (1 for ``cap`` 0).
    """
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)
    neg_inf, pos_inf = acc_constant(acc, -math.inf), acc_constant(acc, math.inf)
    nan = acc_constant(acc, math.nan)

    @cuda.jit(device=True)
    def online(m, s, z):
        # -inf adds exactly 0 (and is skipped so that -inf - -inf gives no NaN); a NaN
        # poisons s; +inf is made NaN by finish (or by the row reduction's rescaling)
        if z > m:
            return z, s * math.exp(m - z) + one
        if z != neg_inf:
            return m, s + math.exp(z - m)
        return m, s

    @cuda.jit(device=True)
    def finish(m, s):
        if m == pos_inf:
            s = nan
        inv = one / s if s != zero else zero
        # math.log(0) is -inf on a GPU but raises in the simulator's Python
        log_s = math.log(s) if s > zero else (neg_inf if s == zero else s)
        return log_s, inv

    @cuda.jit(device=True)
    def nll(m, z, log_s):
        return (m - z) + log_s

    @cuda.jit(device=True)
    def grad_value(g, big_a, z, m, inv, a):
        return g * (big_a * (math.exp(z - m) * inv) - a)

    @cuda.jit(device=True)
    def capped(z, cap):
        return cap * math.tanh(z / cap) if cap > zero else z

    @cuda.jit(device=True)
    def cap_slope(zc, cap):
        if cap > zero:
            r = zc / cap
            return one - r * r
        return one

    return online, finish, nll, grad_value, capped, cap_slope


@functools.cache
def _group_reductions(acc):
    """``row_max_sum`` (a row's max and rescaled sum over its threads) and ``group_sum``."""
    zero, neg_inf = acc_constant(acc, 0.0), acc_constant(acc, -math.inf)
    group_sum, group_max = group_reducers(acc)

    @cuda.jit(device=True)
    def row_max_sum(m, s, buf, tx, ty, tx_n):
        big = group_max(m, buf, tx, ty, tx_n)
        # a thread that saw +inf keeps m = +inf: exp(inf - inf) = NaN makes the row NaN
        scale = math.exp(m - big) if m != neg_inf else zero
        return big, group_sum(s * scale, buf, tx, ty, tx_n)

    return row_max_sum, group_sum


@functools.cache
def _row_scale(acc):
    """Device function ``(grad_scale, i, live, divisor, fixed, reduction) -> g``: row ``i``'s
    gradient factor, the upstream gradient (``grad_scale``: empty for 1, one value, or one
    per row), over a mean's divisor: ``divisor[0]`` when computed on the device, else
    ``fixed``."""
    one = acc_constant(acc, 1.0)

    @cuda.jit(device=True)
    def row_scale(grad_scale, i, live, divisor, fixed, reduction):
        size = grad_scale.shape[0]
        g = grad_scale[i if size > 1 and live else 0] if size > 0 else one
        if reduction == MEAN:
            g = g / (divisor[0] if divisor.shape[0] > 0 else acc(fixed))
        return g

    return row_scale


@functools.cache
def _row_weight(acc):
    """Device function ``(y, weight, ignore_index, num_classes) -> (w, valid)``: the class
    weight of label ``y`` (1 without weights) and whether it takes part; 0 if not."""
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)

    @cuda.jit(device=True)
    def row_weight(y, weight, ignore_index, num_classes):
        if y == ignore_index or y < 0 or y >= num_classes:
            return zero, False
        return (acc(weight[y]) if weight.shape[0] > 0 else one), True

    return row_weight


@functools.cache
def _labels_kernel(acc, bf16: bool):
    zero, one, neg_inf = (acc_constant(acc, v) for v in (0.0, 1.0, -math.inf))
    nan = acc_constant(acc, math.nan)
    online, finish, nll, grad_value, capped, cap_slope = row_maths(acc)
    row_max_sum, group_sum = _group_reductions(acc)
    batch = _batch(acc)
    load, store = element_io(acc, bf16)
    row_scale, row_weight = _row_scale(acc), _row_weight(acc)

    @cuda.jit
    def _softmax_xent_labels_rows_kernel(
        logits,
        labels,
        weight,
        grad_scale,
        grad,
        row_loss,
        divisor,
        fixed_divisor,
        reduction,
        ignore_index,
        smoothing,
        z_loss,
        softcap,
        cache,
    ):
        buf = cuda.shared.array(0, acc)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tx_n, ry = cuda.blockDim.x, cuda.blockDim.y
        n, num_c = logits.shape
        i = types.int64(cuda.blockIdx.x) * ry + ty
        live = i < n
        row = ry * tx_n + ty * num_c  # this row's cache in buf, after the scratch
        has_w = weight.shape[0] > 0
        writes = grad.shape[0] > 0  # else the loss alone
        eps, zl, cap = acc(smoothing), acc(z_loss), acc(softcap)
        eps_c = eps / acc(num_c) if num_c > 0 else zero
        y = types.int64(-1)
        valid = False
        w_y = zero
        if live:
            y = labels[i]
            w_y, valid = row_weight(y, weight, ignore_index, num_c)
        z_y = zero  # read only by the thread owning column y, before anyone writes the row
        need_w = has_w and eps > zero  # sum_c w_c enters A only through the smoothing

        m, s, w_sum = neg_inf, zero, zero
        zs = cuda.local.array(batch, acc)  # constant indices only: registers
        base = types.int64(tx)
        while live and base < num_c:
            # batch loads in flight, then the updates in the same order as one at a time
            if base + (batch - 1) * tx_n < num_c:
                for u in range(batch):
                    zs[u] = load(logits[i, base + u * tx_n])
            else:
                for u in range(batch):
                    c = base + u * tx_n
                    zs[u] = load(logits[i, c]) if c < num_c else neg_inf
            for u in range(batch):
                c = base + u * tx_n
                if c < num_c:
                    z = capped(zs[u], cap)
                    if cache:
                        buf[row + c] = z
                    if c == y:
                        z_y = z
                    m, s = online(m, s, z)
                    if need_w:
                        w_sum += acc(weight[c])
            base += batch * tx_n
        big, total = row_max_sum(m, s, buf, tx, ty, tx_n)
        w_all = group_sum(w_sum, buf, tx, ty, tx_n) if need_w else acc(num_c)
        log_s, inv = finish(big, total)
        lse = big + log_s
        # A = sum_c a_c = (1 - eps) w_y + (eps / C) sum_c w_c, and z-loss's 2 zl lse
        big_a = (one - eps) * w_y + eps_c * w_all
        if zl > zero:
            big_a += (zl + zl) * lse
        g = row_scale(grad_scale, i, live, divisor, fixed_divisor, reduction)

        smooth = zero
        if live and (writes or (valid and eps > zero)):
            for c in range(tx, num_c, tx_n):
                z = buf[row + c] if cache else capped(load(logits[i, c]), cap)
                if valid:
                    # w_c only with smoothing: an inf weight of an unused class stays out
                    w_c = (acc(weight[c]) if has_w else one) if eps > zero else zero
                    if writes:
                        a = eps_c * w_c
                        if c == y:
                            a += (one - eps) * w_y
                        value = grad_value(g, big_a, z, big, inv, a) * cap_slope(z, cap)
                        grad[i, c] = store(value)
                    if eps > zero:
                        smooth += w_c * nll(big, z, log_s)
                else:
                    grad[i, c] = store(zero)
        if eps > zero:
            smooth = group_sum(smooth, buf, tx, ty, tx_n)
        if live:
            if valid:
                if tx == y % tx_n:
                    loss = (one - eps) * w_y * nll(big, z_y, log_s)
                    if eps > zero:
                        loss += eps_c * smooth
                    if zl > zero:
                        loss += zl * lse * lse
                    row_loss[i] = loss
            elif tx == 0:
                # ignored: no loss; out of range: NaN so that the reduced loss shows it
                row_loss[i] = zero if y == ignore_index else nan

    return _softmax_xent_labels_rows_kernel


@functools.cache
def _probs_kernel(acc, bf16: bool, target_bf16: bool):
    zero, one, neg_inf = (acc_constant(acc, v) for v in (0.0, 1.0, -math.inf))
    online, finish, nll, grad_value, capped, cap_slope = row_maths(acc)
    row_max_sum, group_sum = _group_reductions(acc)
    batch = _batch(acc)
    load, store = element_io(acc, bf16)
    load_target = element_io(acc, target_bf16)[0]
    row_scale = _row_scale(acc)

    @cuda.jit
    def _softmax_xent_probs_rows_kernel(
        logits,
        target,
        weight,
        grad_scale,
        grad,
        row_loss,
        divisor,
        fixed_divisor,
        reduction,
        smoothing,
        z_loss,
        softcap,
        cache,
    ):
        buf = cuda.shared.array(0, acc)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tx_n, ry = cuda.blockDim.x, cuda.blockDim.y
        n, num_c = logits.shape
        i = types.int64(cuda.blockIdx.x) * ry + ty
        live = i < n
        row = ry * tx_n + ty * num_c
        has_w = weight.shape[0] > 0
        writes = grad.shape[0] > 0  # else the loss alone
        eps, zl, cap = acc(smoothing), acc(z_loss), acc(softcap)
        eps_c = eps / acc(num_c) if num_c > 0 else zero

        m, s, a_sum = neg_inf, zero, zero
        zs = cuda.local.array(batch, acc)  # constant indices only: registers
        ts = cuda.local.array(batch, acc)
        base = types.int64(tx)
        while live and base < num_c:
            # batch loads of each array in flight, then the updates in column order
            if base + (batch - 1) * tx_n < num_c:
                for u in range(batch):
                    zs[u] = load(logits[i, base + u * tx_n])
                    ts[u] = load_target(target[i, base + u * tx_n])
            else:
                for u in range(batch):
                    c = base + u * tx_n
                    zs[u] = load(logits[i, c]) if c < num_c else neg_inf
                    ts[u] = load_target(target[i, c]) if c < num_c else zero
            for u in range(batch):
                c = base + u * tx_n
                if c < num_c:
                    z = capped(zs[u], cap)
                    if cache:
                        buf[row + c] = z
                    m, s = online(m, s, z)
                    w_c = acc(weight[c]) if has_w else one
                    a_sum += w_c * (ts[u] * (one - eps) + eps_c)
            base += batch * tx_n
        big, total = row_max_sum(m, s, buf, tx, ty, tx_n)
        big_a = group_sum(a_sum, buf, tx, ty, tx_n)
        log_s, inv = finish(big, total)
        lse = big + log_s
        big_a_z = big_a + (zl + zl) * lse if zl > zero else big_a  # z-loss's 2 zl lse
        g = row_scale(grad_scale, i, live, divisor, fixed_divisor, reduction)

        loss = zero
        if live:
            for c in range(tx, num_c, tx_n):
                z = buf[row + c] if cache else capped(load(logits[i, c]), cap)
                w_c = acc(weight[c]) if has_w else one
                a = w_c * (load_target(target[i, c]) * (one - eps) + eps_c)
                if writes:
                    value = grad_value(g, big_a_z, z, big, inv, a) * cap_slope(z, cap)
                    grad[i, c] = store(value)
                loss += a * nll(big, z, log_s)
        loss = group_sum(loss, buf, tx, ty, tx_n)
        if live and tx == 0:
            row_loss[i] = loss + zl * lse * lse if zl > zero else loss

    return _softmax_xent_probs_rows_kernel


@functools.cache
def _row_weights_kernel(acc):
    row_weight = _row_weight(acc)

    @cuda.jit
    def _label_row_weights_kernel(labels, weight, row_weights, ignore_index, num_classes):
        for i in range(cuda.grid(1), labels.shape[0], cuda.gridsize(1)):
            row_weights[i] = row_weight(labels[i], weight, ignore_index, num_classes)[0]

    return _label_row_weights_kernel


@functools.cache
def _label_scan_kernel(acc, tpb: int):
    """One launch over the labels: the first bad one and a mean's divisor (see
    :func:`softmax_xent_labels`), each tile's sums canonical and the last block folding them."""
    count = TILE // tpb
    fold, tree = register_fold(acc, count), block_tile_sum(acc, tpb)
    fold_tiles, is_last, least = fold_partials(acc, tpb), last_block(), block_min(tpb)
    zero, one, nan = (acc_constant(acc, v) for v in (0.0, 1.0, math.nan))
    row_weight = _row_weight(acc)

    @cuda.jit
    def _label_scan_kernel(
        labels, weight, ignore_index, num_c, part, bad_part, divisor, bad, counter
    ):
        smem = cuda.shared.array(tpb, acc)
        ints = cuda.shared.array(tpb, types.int64)
        flag = cuda.shared.array(1, types.int32)
        r = cuda.local.array(count, acc)
        taking_part = cuda.local.array(count, acc)
        t = cuda.threadIdx.x
        n, tiles = labels.shape[0], part.shape[1]
        for tile in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):
            first = types.int64(tile) * TILE + t
            worst = n
            # one read of each label: its row weight, whether it takes part, and the first
            # bad label of the thread
            for k in range(count):
                i = first + tpb * k
                r[k], taking_part[k] = zero, zero
                if i < n:
                    y = labels[i]
                    r[k], valid = row_weight(y, weight, ignore_index, num_c)
                    if valid:
                        taking_part[k] = one
                    elif y != ignore_index and worst == n:
                        worst = i
            w_sum = tree(fold(r), smem, t)
            rows = tree(fold(taking_part), smem, t)
            worst = least(worst, ints, t)
            if t == 0:
                part[0, tile], part[1, tile], bad_part[tile] = w_sum, rows, worst
        if is_last(counter, flag, t):
            w_total = fold_tiles(part[0], tiles, smem, r, t)
            rows_total = fold_tiles(part[1], tiles, smem, r, t)
            worst = n
            for j in range(t, tiles, tpb):
                worst = min(worst, bad_part[j])
            worst = least(worst, ints, t)
            if t == 0:
                bad[0] = worst if worst < n else -1
                # no row: the mean is 0; weighted rows whose weights sum to 0: PyTorch's 0/0
                if rows_total == zero:
                    divisor[0] = one
                elif weight.shape[0] > 0 and w_total == zero:
                    divisor[0] = nan
                else:
                    divisor[0] = w_total

    return _label_scan_kernel


def label_row_weights(labels, weight, row_weight, ignore_index, num_classes) -> None:
    """``row_weight[i]``: 0 for an ignored or out-of-range label, else ``weight[labels[i]]``.

    ``labels`` ``(N,)`` int64; ``weight`` ``(C,)`` acc or ``(0,)`` for 1; ``row_weight`` ``(N,)``.
    """
    n = row_weight.shape[0]
    if n == 0:
        return
    kernel = _row_weights_kernel(accumulator(row_weight.dtype))
    threads = POLICY.elementwise_threads
    launch(
        kernel,
        grid_for(n, threads),
        threads,
        0,
        labels,
        weight,
        row_weight,
        int(ignore_index),
        int(num_classes),
    )


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
) -> None:
    """Loss and gradient of class-index targets, reduced (contract in docs/BACKENDS.md;
    ``grad`` None for the loss alone).

    Three launches: the labels' scan (the first bad label into ``bad[0]``, -1 for none, and
    a mean's divisor, on the device), the rows, and the canonical sum of ``row_loss`` into
    ``loss[0]`` (``SUM``, ``MEAN``).
    """
    n, num_c = logits.shape
    if n == 0:
        return
    acc = accumulator(row_loss.dtype)
    tiles, tpb = -(-n // TILE), POLICY.tile_threads
    divisor = scratch(1, row_loss.dtype)
    part, bad_part = scratch((2, tiles), row_loss.dtype), scratch(tiles, np.int64)
    launch(
        _label_scan_kernel(acc, tpb),
        tile_grid(tiles),
        tpb,
        0,
        labels,
        weight,
        int(ignore_index),
        int(num_c),
        part,
        bad_part,
        divisor,
        bad,
        tickets(),
    )
    tx, ry, cache, shared = row_shape(num_c, acc.bitwidth // 8)
    launch(
        _labels_kernel(acc, is_bf16(logits.dtype)),
        -(-n // ry),
        (tx, ry),
        shared,
        bits(logits),
        labels,
        weight,
        grad_scale,
        gradient_or_none(grad, logits),
        row_loss,
        divisor,
        1.0,
        int(reduction),
        int(ignore_index),
        float(smoothing),
        float(z_loss),
        float(softcap),
        cache,
    )
    if reduction >= SUM:
        by = divisor if reduction == MEAN else divisor[:0]
        total_divided(row_loss, loss, scratch(tiles, row_loss.dtype), by)


def softmax_xent_probs(
    logits, target, weight, grad_scale, grad, row_loss, loss, smoothing, z_loss, softcap, reduction
) -> None:
    """Loss and gradient of probability targets ``target`` ``(N, C)`` (any float dtype),
    reduced: the rows, and for ``SUM`` and ``MEAN`` the canonical sum into ``loss[0]``
    (``grad`` None for the loss alone)."""
    n, num_c = logits.shape
    if n == 0:
        return
    acc = accumulator(row_loss.dtype)
    tx, ry, cache, shared = row_shape(num_c, acc.bitwidth // 8)
    no_divisor = row_loss[:0]
    launch(
        _probs_kernel(acc, is_bf16(logits.dtype), is_bf16(target.dtype)),
        -(-n // ry),
        (tx, ry),
        shared,
        bits(logits),
        bits(target),
        weight,
        grad_scale,
        gradient_or_none(grad, logits),
        row_loss,
        no_divisor,
        float(n),
        int(reduction),
        float(smoothing),
        float(z_loss),
        float(softcap),
        cache,
    )
    if reduction >= SUM:
        fixed = float(n) if reduction == MEAN else 1.0
        total_divided(row_loss, loss, scratch(-(-n // TILE), row_loss.dtype), no_divisor, fixed)


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU.

    Soft targets of every float dtype are compiled for C-contiguous arrays; the strided
    variant (layout ``A``) is compiled with the logits' dtype.
    """
    i64, i32, f64, b1 = types.int64, types.int32, types.float64, types.boolean
    sigs = []
    for dtype in STORAGE:
        acc, bf16 = accumulator(dtype), is_bf16(dtype)
        vec = acc[::1]
        reduced = (vec, f64, i64)  # divisor, fixed divisor, reduction
        for layout in ("C", "A"):
            mat = types.Array(kernel_type(dtype), 2, layout)
            labels = types.Array(i64, 1, layout)
            kernel = _labels_kernel(acc, bf16)
            args = (mat, labels, vec, vec, mat, vec, *reduced, i64, f64, f64, f64, b1)
            sigs.append((kernel, args))
            scan = (labels, vec, i64, i64, acc[:, ::1], i64[::1], vec, i64[::1], i32[::1])
            sigs.append((_label_scan_kernel(acc, GPU_POLICY.tile_threads), scan))
            for tdtype in STORAGE if layout == "C" else (dtype,):
                target = types.Array(kernel_type(tdtype), 2, layout)
                kernel = _probs_kernel(acc, bf16, is_bf16(tdtype))
                sigs.append(
                    (kernel, (mat, target, vec, vec, mat, vec, *reduced, f64, f64, f64, b1))
                )
        sigs.append((_row_weights_kernel(acc), (i64[::1], vec, vec, i64, i64)))
    return sigs
