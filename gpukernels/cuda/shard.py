r"""Class-sharded cross-entropy's local steps on the GPU (maths in ``gpukernels._shard``).

A block is ``ry`` rows of ``tx`` threads (``_cuda.row_shape``), each thread striding over
its row's columns. ``shard_stats``: the online max and sum of exponentials of
``softmax_xent.row_maths`` (of the capped logits), the target's logit and the sum of logits,
reduced over the row's threads. ``shard_loss_and_grad``: every column's gradient from the
row's merged stats, no reduction; the row's first thread writes its loss.
"""

from __future__ import annotations

import functools
import math

from numba import cuda
from numba.core import types

from ._cuda import (
    STORAGE,
    acc_constant,
    accumulator,
    bits,
    element_io,
    is_bf16,
    kernel_type,
    launch,
    row_shape,
)
from .softmax_xent import _group_reductions, row_maths


@functools.cache
def _stats_kernel(acc, bf16: bool):
    zero, neg_inf = acc_constant(acc, 0.0), acc_constant(acc, -math.inf)
    online, _, _, _, capped, _ = row_maths(acc)
    row_max_sum, group_sum = _group_reductions(acc)
    load = element_io(acc, bf16)[0]

    @cuda.jit
    def _shard_stats_rows_kernel(logits, labels, stats, start, softcap):
        buf = cuda.shared.array(0, acc)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tx_n, ry = cuda.blockDim.x, cuda.blockDim.y
        n, width = logits.shape
        i = types.int64(cuda.blockIdx.x) * ry + ty
        live = i < n
        cap = acc(softcap)
        local = labels[i] - start if live else types.int64(-1)
        m, s, z_sum, z_t = neg_inf, zero, zero, zero
        if live:
            for c in range(tx, width, tx_n):
                z = capped(load(logits[i, c]), cap)
                m, s = online(m, s, z)
                z_sum += z
                if c == local:
                    z_t = z
        big, total = row_max_sum(m, s, buf, tx, ty, tx_n)
        z_sum = group_sum(z_sum, buf, tx, ty, tx_n)
        z_t = group_sum(z_t, buf, tx, ty, tx_n)  # one thread holds it, the others add 0
        if live and tx == 0:
            stats[i, 0] = big
            stats[i, 1] = total
            stats[i, 2] = z_t
            stats[i, 3] = z_sum

    return _shard_stats_rows_kernel


@functools.cache
def _loss_grad_kernel(acc, bf16: bool):
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)
    _, finish, nll, _, capped, cap_slope = row_maths(acc)
    load, store = element_io(acc, bf16)

    @cuda.jit
    def _shard_loss_grad_rows_kernel(
        logits, labels, stats, grad_scale, grad, row_loss, start, classes, ignore, eps_, zl_, cap_
    ):
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tx_n, ry = cuda.blockDim.x, cuda.blockDim.y
        n, width = logits.shape
        i = types.int64(cuda.blockIdx.x) * ry + ty
        if i >= n:
            return
        eps, zl, cap = acc(eps_), acc(zl_), acc(cap_)
        if labels[i] == ignore:
            for c in range(tx, width, tx_n):
                grad[i, c] = store(zero)
            if tx == 0:
                row_loss[i] = zero
            return
        m, s, z_y, z_sum = stats[i, 0], stats[i, 1], stats[i, 2], stats[i, 3]
        log_s, inv = finish(m, s)
        lse = m + log_s
        keep, eps_c = one - eps, eps / acc(classes)
        g = grad_scale[i if grad_scale.shape[0] > 1 else 0]
        a = one + (zl + zl) * lse if zl > zero else one
        local = labels[i] - start
        for c in range(tx, width, tx_n):
            zc = capped(load(logits[i, c]), cap)
            v = a * (math.exp(zc - m) * inv) - eps_c
            if c == local:
                v -= keep
            grad[i, c] = store(g * v * cap_slope(zc, cap))
        if tx == 0:
            loss = keep * nll(m, z_y, log_s)
            if eps > zero:  # terms that are off are left out: 0 * inf would make the row NaN
                loss = loss + eps * lse - eps_c * z_sum
            if zl > zero:
                loss = loss + zl * lse * lse
            row_loss[i] = loss

    return _shard_loss_grad_rows_kernel


def shard_stats(logits, labels, stats, class_start, softcap) -> None:
    """``stats[i] = [max, sum exp(z - max), z_target or 0, sum z]`` of the shard's rows."""
    n, width = logits.shape
    if width == 0:
        stats[...] = 0
        stats[:, 0] = -math.inf
        return
    acc = accumulator(stats.dtype)
    tx, ry, _, _ = row_shape(width, acc.bitwidth // 8)
    kernel = _stats_kernel(acc, is_bf16(logits.dtype))
    shared = tx * ry * (acc.bitwidth // 8)
    args = (bits(logits), labels, stats, int(class_start), float(softcap))
    launch(kernel, -(-n // ry), (tx, ry), shared, *args)


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
) -> None:
    """Row losses of the whole rows and this shard's gradient columns (``grad`` may be
    ``logits``: each element is read just before it is written)."""
    n, width = logits.shape
    acc = accumulator(row_loss.dtype)
    tx, ry, _, _ = row_shape(max(width, 1), acc.bitwidth // 8)
    kernel = _loss_grad_kernel(acc, is_bf16(logits.dtype))
    scalars = (int(class_start), int(num_classes), int(ignore_index))
    options = (float(smoothing), float(z_loss), float(softcap))
    args = (bits(logits), labels, stats, grad_scale, bits(grad), row_loss, *scalars, *options)
    launch(kernel, -(-n // ry), (tx, ry), 0, *args)


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    i64, f64 = types.int64, types.float64
    sigs = []
    for dtype in STORAGE:
        acc, bf16 = accumulator(dtype), is_bf16(dtype)
        labels, stats = i64[::1], acc[:, ::1]
        for layout in ("C", "A"):
            mat = types.Array(kernel_type(dtype), 2, layout)
            sigs.append((_stats_kernel(acc, bf16), (mat, labels, stats, i64, f64)))
            args = (mat, labels, stats, acc[::1], mat, acc[::1], i64, i64, i64, f64, f64, f64)
            sigs.append((_loss_grad_kernel(acc, bf16), args))
    return sigs
