r"""Several losses over the column slices of one prediction row, in one launch.

Term ``k`` reads columns ``cols[k]`` of ``pred`` and ``tcols[k]`` of ``target`` on the rows it
selects (``only_where[k] < 0`` or ``target[i, only_where[k]] != 0``). Its row loss, unweighted:

* softmax cross-entropy, one target column (of a term wider than one) holding a class index
  ``y``: :math:`-\log p_y`, gradient :math:`p - [c = y]` (a class that is not a whole number
  inside the slice: NaN loss, zero gradient); with a probability slice ``t``:
  :math:`-\sum_c t_c \log p_c`, gradient :math:`(\sum_c t_c) p - t`; the row maths of
  ``softmax_xent.row_maths``;
* BCE with logits, squared error, Huber (``term_param[k, 0]`` its delta): the sum over the
  term's columns of the scalar leaf of ``gpukernels._scalar``, gradient its slope;
* a cross-entropy term's z-loss factor and softcap are ``term_param[k, 1:3]`` (0: none).

``grad[i, c]`` is :math:`\sum_k \mathrm{term\_scale}_k\, g_k(c)` over the selected terms whose
columns hold ``c``, 0 where none does. A thread owns a row (rows are short): phase 1 computes
every term's loss and softmax statistics, phase 2 walks the columns once, reading ``pred[i, c]``
just before writing ``grad[i, c]``, so ``grad`` may be ``pred`` itself.
"""

from __future__ import annotations

import functools
import math

from numba import cuda
from numba.core import types

from .. import _kinds, _scalar
from ._cuda import (
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
    scalar_device,
)
from .softmax_xent import row_maths

_XENT, _BCE, _MSE = _kinds.SOFTMAX_CROSS_ENTROPY, _kinds.BCE_WITH_LOGITS, _kinds.MSE
MAX_TERMS = _kinds.MAX_TERMS  # softmax statistics per term live in a thread's local memory


@functools.cache
def _kernel(acc, bf16: bool, target_bf16: bool):
    zero, one = acc_constant(acc, 0.0), acc_constant(acc, 1.0)
    neg_inf, nan = acc_constant(acc, -math.inf), acc_constant(acc, math.nan)
    online, finish, nll, grad_value, capped, cap_slope = row_maths(acc)
    bce = scalar_device(_scalar.bce_with_logits, acc)
    squared_error = scalar_device(_scalar.squared_error, acc)
    huber = scalar_device(_scalar.huber, acc)
    load, store = element_io(acc, bf16)
    load_target = element_io(acc, target_bf16)[0]

    @cuda.jit(device=True)
    def selected(target, i, only_where, k):
        col = only_where[k]
        # in acc: float16/32 != the integer 0 would compare in float64
        return col < 0 or load_target(target[i, col]) != zero

    @cuda.jit(device=True)
    def class_of(target, i, t0, t1, width):
        """The class index of a one-column target of a wider term, or -1 for probabilities
        or for a value that is not a whole number in ``[0, width)``; and whether it is one."""
        if t1 - t0 != 1 or width == 1:
            return types.int64(-1), False
        v = load_target(target[i, t0])
        if v >= zero and v < acc(width) and v == math.floor(v):
            return types.int64(v), True
        return types.int64(-1), True

    @cuda.jit(device=True)
    def elementwise(kind, z, t, param):
        if kind == _BCE:
            return bce(z, t, one)
        if kind == _MSE:
            return squared_error(z, t, one)
        return huber(z, t, param)

    @cuda.jit
    def _composite_rows_kernel(
        pred, target, kinds, cols, tcols, only_where, term_scale, term_param, grad, row_loss
    ):
        row_max = cuda.local.array(MAX_TERMS, acc)
        row_inv = cuda.local.array(MAX_TERMS, acc)
        big_a = cuda.local.array(MAX_TERMS, acc)  # A, plus z-loss's 2 zl lse
        num_terms = kinds.shape[0]
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            for k in range(num_terms):  # phase 1: reads only
                loss = zero
                if selected(target, i, only_where, k):
                    p0, p1, t0 = cols[k, 0], cols[k, 1], tcols[k, 0]
                    if kinds[k] == _XENT:
                        zl, cap = term_param[k, 1], term_param[k, 2]
                        m, s = neg_inf, zero
                        for c in range(p0, p1):
                            m, s = online(m, s, capped(load(pred[i, c]), cap))
                        log_s, row_inv[k] = finish(m, s)
                        row_max[k] = m
                        y, indexed = class_of(target, i, t0, tcols[k, 1], p1 - p0)
                        total = one
                        if indexed:
                            z_y = capped(load(pred[i, p0 + y]), cap) if y >= 0 else zero
                            loss = nll(m, z_y, log_s) if y >= 0 else nan
                        else:
                            total = zero
                            for c in range(p1 - p0):
                                t = load_target(target[i, t0 + c])
                                loss += t * nll(m, capped(load(pred[i, p0 + c]), cap), log_s)
                                total += t
                        lse = m + log_s
                        if zl > zero:
                            loss += zl * lse * lse
                            total += (zl + zl) * lse
                        big_a[k] = total
                    else:
                        for c in range(p1 - p0):
                            z, t = load(pred[i, p0 + c]), load_target(target[i, t0 + c])
                            loss += elementwise(kinds[k], z, t, term_param[k, 0])[0]
                row_loss[i, k] = loss
            # phase 2: column c read, then written (no columns for the loss alone)
            for c in range(pred.shape[1] if grad.shape[0] > 0 else 0):
                z = load(pred[i, c])
                g = zero
                for k in range(num_terms):
                    p0, p1, t0 = cols[k, 0], cols[k, 1], tcols[k, 0]
                    if c < p0 or c >= p1 or not selected(target, i, only_where, k):
                        continue
                    if kinds[k] == _XENT:
                        cap = term_param[k, 2]
                        zc = capped(z, cap)
                        y, indexed = class_of(target, i, t0, tcols[k, 1], p1 - p0)
                        if not indexed:
                            a = load_target(target[i, t0 + c - p0])
                        else:
                            a = one if c - p0 == y else zero
                        if not indexed or y >= 0:
                            value = grad_value(
                                term_scale[k], big_a[k], zc, row_max[k], row_inv[k], a
                            )
                            g += value * cap_slope(zc, cap)
                    else:
                        t = load_target(target[i, t0 + c - p0])
                        g += term_scale[k] * elementwise(kinds[k], z, t, term_param[k, 0])[1]
                grad[i, c] = store(g)

    return _composite_rows_kernel


def composite(
    pred, target, kinds, cols, tcols, only_where, term_scale, term_param, grad, row_loss
) -> None:
    """All terms' row losses (``row_loss`` ``(N, K)`` acc) and the summed gradient ``grad``
    (``None``: the loss alone; the kernel then gets ``pred``'s first 0 rows and skips its
    second phase).

    ``pred`` ``(N, P)``, ``target`` ``(N, Q)`` of ``pred``'s dtype or acc; ``kinds`` ``(K,)``,
    ``cols``/``tcols`` ``(K, 2)`` and ``only_where`` ``(K,)`` int64; ``term_scale`` ``(K,)``
    and ``term_param`` ``(K, 3)`` acc (delta, z-loss factor, softcap). At most ``MAX_TERMS``
    terms (checked by the public layer).
    """
    n = row_loss.shape[0]
    if n == 0:
        return
    threads = POLICY.elementwise_threads
    kernel = _kernel(accumulator(row_loss.dtype), is_bf16(pred.dtype), is_bf16(target.dtype))
    launch(
        kernel,
        grid_for(n, threads),
        threads,
        0,
        bits(pred),
        bits(target),
        kinds,
        cols,
        tcols,
        only_where,
        term_scale,
        term_param,
        gradient_or_none(grad, pred),
        row_loss,
    )


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    i64 = types.int64
    sigs = []
    for dtype in STORAGE:
        acc, bf16 = accumulator(dtype), is_bf16(dtype)
        for layout in ("C", "A"):
            mat = types.Array(kernel_type(dtype), 2, layout)
            ints = (i64[::1], i64[:, ::1], i64[:, ::1], i64[::1])
            # the target in the prediction's dtype, or (another dtype) in acc
            for target, target_bf16 in {(mat, bf16), (types.Array(acc, 2, layout), False)}:
                args = (mat, target, *ints, acc[::1], acc[:, ::1], mat, acc[:, ::1])
                sigs.append((_kernel(acc, bf16, target_bf16), args))
    return sigs
