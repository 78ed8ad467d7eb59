r"""Several losses over the column slices of one prediction row, in one launch.

Term ``k`` reads columns ``cols[k]`` of ``pred`` and ``tcols[k]`` of ``target`` on the rows it
selects (``only_where[k] < 0`` or ``target[i, only_where[k]] != 0``). Its row loss, unweighted:

* softmax CE (kind 0), one target column (of a term wider than one) holding a class index ``y``:
  :math:`\mathrm{lse}(z) - z_y`, gradient :math:`p - [c = y]` (a class outside the slice:
  NaN loss, zero gradient); with a probability slice ``t``:
  :math:`\sum_c t_c (\mathrm{lse} - z_c)`, gradient :math:`(\sum_c t_c) p - t`;
* BCE with logits (kind 1): :math:`\sum_c \ell_{\mathrm{bce}}(z_c, t_c)`, gradient
  :math:`\sigma(z) - t`;
* MSE (kind 2): :math:`\sum_c (z_c - t_c)^2`, gradient :math:`2 (z - t)`.

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

from .. import _scalar
from ._cuda import POLICY, STORAGE_TYPES, acc_constant, accumulator, grid_for, launch, scalar_device

MAX_TERMS = 16  # softmax statistics per term live in a thread's local memory


@functools.cache
def _kernel(acc):
    zero, one, two = (acc_constant(acc, v) for v in (0.0, 1.0, 2.0))
    neg_inf, pos_inf = acc_constant(acc, -math.inf), acc_constant(acc, math.inf)
    nan = acc_constant(acc, math.nan)
    _bce = scalar_device(_scalar.bce_with_logits, acc)

    @cuda.jit(device=True)
    def selected(target, i, only_where, k):
        col = only_where[k]
        # in acc: float16/32 != the integer 0 would compare in float64
        return col < 0 or acc(target[i, col]) != zero

    @cuda.jit(device=True)
    def log_sum_exp(pred, i, start, stop):
        m, s = neg_inf, zero
        for c in range(start, stop):
            z = acc(pred[i, c])
            if z > m:
                s = s * math.exp(m - z) + one
                m = z
            elif z != neg_inf:
                s += math.exp(z - m)
        if m == pos_inf or s != s:
            return nan  # a NaN or +inf logit makes the whole term NaN
        if s == zero:
            return neg_inf  # every logit -inf (math.log(0) raises in the simulator)
        return m + math.log(s)

    @cuda.jit(device=True)
    def term_loss(pred, target, i, kind, p0, p1, t0, t1, lse):
        """Row loss of one term; for a probability target also ``sum_c t_c``."""
        loss, t_sum = zero, zero
        if kind == 0 and t1 - t0 == 1 and p1 - p0 > 1:
            y = acc(target[i, t0])
            if y >= zero and y < acc(p1 - p0):  # acc(): float32 < int64 compares in float64
                loss = lse - acc(pred[i, p0 + types.int64(y)])
            else:
                loss = nan
        else:
            for c in range(p1 - p0):
                z, t = acc(pred[i, p0 + c]), acc(target[i, t0 + c])
                if kind == 0:
                    loss += t * (lse - z)
                    t_sum += t
                elif kind == 1:
                    loss += _bce(z, t, one)[0]
                else:
                    loss += (z - t) * (z - t)
        return loss, t_sum

    @cuda.jit
    def _composite_rows_kernel(
        pred, target, kinds, cols, tcols, only_where, term_scale, grad, row_loss
    ):
        lse = cuda.local.array(MAX_TERMS, acc)
        t_sum = cuda.local.array(MAX_TERMS, acc)
        num_terms = kinds.shape[0]
        for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
            for k in range(num_terms):  # phase 1: reads only
                loss = zero
                if selected(target, i, only_where, k):
                    p0, p1 = cols[k, 0], cols[k, 1]
                    lse[k] = log_sum_exp(pred, i, p0, p1) if kinds[k] == 0 else zero
                    loss, total = term_loss(
                        pred, target, i, kinds[k], p0, p1, tcols[k, 0], tcols[k, 1], lse[k]
                    )
                    t_sum[k] = total
                row_loss[i, k] = loss
            for c in range(pred.shape[1]):  # phase 2: column c read, then written
                z = acc(pred[i, c])
                g = zero
                for k in range(num_terms):
                    p0, p1, t0 = cols[k, 0], cols[k, 1], tcols[k, 0]
                    if c < p0 or c >= p1 or not selected(target, i, only_where, k):
                        continue
                    kind = kinds[k]
                    if kind == 0:
                        p = math.exp(z - lse[k])
                        if tcols[k, 1] - t0 == 1 and p1 - p0 > 1:
                            y = acc(target[i, t0])
                            if y >= zero and y < acc(p1 - p0):
                                g += term_scale[k] * (p - one if c - p0 == types.int64(y) else p)
                        else:
                            t = acc(target[i, t0 + c - p0])
                            g += term_scale[k] * (t_sum[k] * p - t)
                    elif kind == 1:
                        g += term_scale[k] * _bce(z, acc(target[i, t0 + c - p0]), one)[1]
                    else:
                        g += term_scale[k] * (two * (z - acc(target[i, t0 + c - p0])))
                grad[i, c] = g

    return _composite_rows_kernel


def composite(pred, target, kinds, cols, tcols, only_where, term_scale, grad, row_loss) -> None:
    """All terms' row losses (``row_loss`` ``(N, K)`` acc) and the summed gradient ``grad``.

    ``pred`` ``(N, P)``, ``target`` ``(N, Q)`` of ``pred``'s dtype; ``kinds`` ``(K,)``,
    ``cols``/``tcols`` ``(K, 2)`` and ``only_where`` ``(K,)`` int64; ``term_scale`` ``(K,)`` acc.
    At most ``MAX_TERMS`` terms.
    """
    n, num_terms = row_loss.shape
    if num_terms > MAX_TERMS:
        raise ValueError(f"composite_loss takes at most {MAX_TERMS} terms; got {num_terms}")
    if n == 0:
        return
    threads = POLICY.elementwise_threads
    kernel = _kernel(accumulator(row_loss.dtype))
    launch(
        kernel,
        grid_for(n, threads),
        threads,
        0,
        pred,
        target,
        kinds,
        cols,
        tcols,
        only_where,
        term_scale,
        grad,
        row_loss,
    )


def ptx_signatures():
    """``(kernel, argument types)`` of every launch this module makes on a GPU."""
    i64 = types.int64
    sigs = []
    for dtype in STORAGE_TYPES:
        acc = accumulator(dtype.name)
        for layout in ("C", "A"):
            mat = types.Array(dtype, 2, layout)
            args = (mat, mat, i64[::1], i64[:, ::1], i64[:, ::1], i64[::1], acc[::1], mat)
            sigs.append((_kernel(acc), (*args, acc[:, ::1])))
    return sigs
