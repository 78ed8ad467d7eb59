"""``composite_loss``: several loss terms on column slices of one output, in one launch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _validate
from ._batch_sum import canonical_column_sums
from ._common import safe_divide, upstream_scale
from ._dispatch import ArrayArguments, accumulation_dtype
from ._dtypes import companion_dtype
from ._kinds import TermKind
from ._tensors import tensor_io
from ._validate import ResolvedTerm


@dataclass(frozen=True)
class LossTerm:
    """One term of a :func:`composite_loss`.

    Attributes:
        kind: ``"softmax_cross_entropy"``, ``"bce_with_logits"``, ``"mse"`` or ``"huber"``.
        columns: step-1 slice of the prediction's columns the term reads; its bounds must lie
            inside the columns (negative ones count from the end; nothing is clamped).
        target_columns: slice of the target's columns (default: ``columns``). For softmax
            cross-entropy either one column holding the class index or one per class (a
            one-column term with a one-column target reads it as probabilities: softmax of
            one logit is 1, so its loss and gradient are 0).
        weight: the term's factor in the total loss, a finite real number.
        only_where: target column ``k`` (an integer, not a bool): apply the term only to rows
            whose ``target[:, k]`` is nonzero; its mean is then over those rows alone.
        delta: the Huber threshold of a ``"huber"`` term, a finite number > 0.
        z_loss: a ``"softmax_cross_entropy"`` term's z-loss factor (``z_loss lse^2`` per
            selected row, as in :func:`gpukernels.softmax_cross_entropy`), >= 0.
        softcap: a ``"softmax_cross_entropy"`` term's logit cap, ``None`` or > 0.
    """

    kind: str
    columns: slice
    target_columns: slice | None = None
    weight: float = 1.0
    only_where: int | None = None
    delta: float = 1.0
    z_loss: float = 0.0
    softcap: float | None = None


_ARGUMENTS = ArrayArguments(
    "pred", "target", optional=("grad_output", "out"), numbers=("grad_output",), in_place=("pred",)
)


def batches(pred, target) -> None:
    """``pred`` and ``target`` must be 2-D, batches of rows (also ``gpukernels.torch``'s
    check, before it reads their widths)."""
    _validate.ndim("pred", pred, 2, "an (N, P) batch of output rows")
    _validate.ndim("target", target, 2, "an (N, Q) batch of target rows")


@tensor_io(_ARGUMENTS)
def composite_loss(
    pred,
    target,
    terms: Sequence[LossTerm],
    *,
    grad_output=None,
    out=None,
    validate: bool = True,
    gradient: bool = True,
):
    r"""A loss made of different terms on different columns of one output, fused.

    .. math::
        L = \sum_k w_k \, \frac{1}{D_k} \sum_{i \in S_k} \ell_k(\mathrm{pred}_{i, c_k},
        \mathrm{target}_{i, t_k}), \qquad
        \frac{\partial L}{\partial \mathrm{pred}} = \sum_k w_k
        \frac{\partial}{\partial \mathrm{pred}} \Big(\frac{1}{D_k} \sum_{i \in S_k}
        \ell_k\Big)

    (the sum rule: each term's gradient lands in its own columns and overlapping columns
    add; columns no term reads get 0). :math:`S_k` are the selected rows (all, or those with
    ``target[:, only_where] != 0``); :math:`D_k` is :math:`|S_k|` for cross-entropy and
    :math:`|S_k|` times the term's width for BCE, MSE and Huber (each term's own ``"mean"``). A term
    that selects no row contributes 0. One kernel launch computes every term.

    Args:
        pred: ``(N, P)`` float16/bfloat16/float32/float64.
        target: ``(N, Q)`` floats.
        terms: sequence (list or tuple) of at most 16 :class:`LossTerm`.
        grad_output: scalar upstream gradient.
        out: array to write the gradient into; may be ``pred`` itself.
        validate: check that a class-index target column holds whole numbers in the term's
            class range on the rows it reads (one small device-to-host read on a GPU). With
            ``False`` a bad index gives that row of the term a NaN loss and no gradient.
        gradient: ``False`` for the loss alone (``grad`` ``None``; ``out`` must be ``None``).

    Returns:
        ``(loss, grad)``: 0-d loss and the gradient like ``pred`` (``None`` with
        ``gradient=False``).

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> pred = np.array([[2.0, 0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 0.0, 0.0, 0.0]])
        >>> target = np.array([[1.0, 0.0, 0.2, 0.3, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
        >>> terms = [gk.LossTerm("bce_with_logits", slice(0, 1)),
        ...          gk.LossTerm("mse", slice(1, 5), only_where=0)]
        >>> loss, grad = gk.composite_loss(pred, target, terms)
        >>> round(float(loss), 4)
        0.2251
    """
    call = _ARGUMENTS.call(pred, target, grad_output, out)
    pred, target, grad_output, out = call.arrays
    dtype = _validate.float_array("pred", pred)
    _validate.float_array("target", target)
    batches(pred, target)
    n = pred.shape[0]
    if target.shape[0] != n:
        raise ValueError(f"target must have {n} rows like pred, got {target.shape[0]}")
    gradient = _validate.gradient_wanted(gradient, out)
    _validate.out_array(out, tuple(pred.shape), dtype, call.library)
    _validate.grad_output(grad_output, None, ())
    validate = _validate.yes_no("validate", validate)
    resolved = _validate.loss_terms(terms, pred.shape[1], target.shape[1])

    xp, acc = call.xp, accumulation_dtype(dtype)
    for k, term in enumerate(resolved):
        _validate.cap_in_range(f"terms[{k}].softcap", term.softcap, acc)
    target = target.astype(companion_dtype(target.dtype, dtype), copy=False)
    for k, term in enumerate(resolved):
        (c0, c1), t0 = term.columns, term.target_columns[0]
        if validate and _class_index_term(term):
            _validate.class_index_column(
                xp,
                target[:, t0],
                c1 - c0,
                f"target column {t0} (the class index of terms[{k}])",
                None if term.only_where < 0 else target[:, term.only_where],
            )

    # factor_k = w_k / D_k on the device (0 where the term selects no row).
    factors = [
        safe_divide(xp, xp.full((), term.weight, acc), _term_divisor(xp, target, term, n, acc))
        for term in resolved
    ]
    term_scale = xp.stack(factors) * upstream_scale(xp, grad_output, acc)

    grad = (xp.empty(pred.shape, dtype) if out is None else out) if gradient else None
    row_loss = xp.empty((n, len(resolved)), acc)
    if n:
        layout = tuple(
            (
                term.kind,
                term.columns,
                term.target_columns,
                term.only_where,
                (term.delta, term.z_loss, term.softcap),
            )
            for term in resolved
        )
        table = _term_table(xp, layout, acc, _validate.device_id(pred), _stream_of(xp))
        kinds, cols, tcols, only_where, term_param = table
        call.ops("composite").composite(
            pred, target, kinds, cols, tcols, only_where, term_scale, term_param, grad, row_loss
        )
    sums = canonical_column_sums(call, row_loss)
    loss = sum(factor * sums[k] for k, factor in enumerate(factors))
    return xp.asarray(loss, dtype=acc), grad


def _class_index_term(term: ResolvedTerm) -> bool:
    """A softmax cross-entropy term whose one target column holds class indices (a one-column
    term with a one-column target reads it as a probability)."""
    (c0, c1), (t0, t1) = term.columns, term.target_columns
    return term.kind == TermKind.SOFTMAX_CROSS_ENTROPY and t1 - t0 == 1 and c1 - c0 > 1


def _term_divisor(xp, target, term: ResolvedTerm, n: int, acc):
    """The term's mean denominator as a 0-d array on the data's device."""
    only = term.only_where
    rows = xp.full((), n, acc) if only < 0 else xp.count_nonzero(target[:, only])
    rows = xp.asarray(rows).astype(acc)
    if term.kind == TermKind.SOFTMAX_CROSS_ENTROPY:
        return rows
    return rows * (term.columns[1] - term.columns[0])


def _stream_of(xp) -> tuple[int, int] | None:
    """The stream the term tables of ``xp``'s arrays are copied on and read from: CuPy's
    current one (see ``gpukernels.cuda._cuda.stream_key``); ``None`` for NumPy."""
    if xp is np:
        return None
    from .cuda._cuda import stream_key

    return stream_key(xp)


@functools.lru_cache(maxsize=64)
def _term_table(xp, layout: tuple, acc: np.dtype, device: int | None, stream: tuple | None):
    """The terms' metadata as arrays of the data's library, on its device: kinds, columns,
    target columns, ``only_where`` (int64) and each term's parameters (``(K, 3)`` ``acc``:
    Huber's delta, and a cross-entropy term's z-loss factor and softcap, 0 for none).

    Cached per layout, device and stream: a training loop copies it to the GPU once, not per
    call. Per stream, because nothing orders another stream's kernels after the copy, and
    CuPy's pool hands an evicted table's memory back to the stream that made it, free to
    reuse while another stream may still read it."""
    table = np.array(
        [[kind, c0, c1, t0, t1, only] for kind, (c0, c1), (t0, t1), only, _ in layout],
        dtype=np.int64,
    )
    params = np.array([[_validate.saturated(v, acc) for v in p] for *_, p in layout], acc)
    parts = (table[:, 0], table[:, 1:3], table[:, 3:5], table[:, 5], params)
    return tuple(xp.asarray(np.ascontiguousarray(part)) for part in parts)
