r"""Class-sharded softmax cross-entropy: the two local steps of a vocabulary-parallel loss.

When a row of ``V`` logits is split by columns over devices or workers, the loss needs per
row only four numbers from each shard: its max :math:`m_s`, its sum
:math:`S_s = \sum_{c \in s} e^{z_c - m_s}`, the target's logit if the target falls in the
shard (else 0) and the sum of its logits (for label smoothing). ``shard_stats`` computes them,
``merge_shard_stats`` combines two disjoint shards (what an all-reduce or a tree applies):

.. math::
    m = \max(m_a, m_b), \qquad S = S_a e^{m_a - m} + S_b e^{m_b - m}

and sums the other two columns; ``shard_loss_and_grad`` turns the merged stats of the whole
rows into the loss (the same on every shard) and this shard's columns of the gradient. No
logits move between shards; an engine (Dask, ``torch.distributed``) does the exchange.
"""

from __future__ import annotations

import numpy as np

from . import _validate
from ._batch_sum import canonical_sum
from ._common import safe_divide, upstream_scale
from ._dispatch import ArrayArguments, accumulation_dtype
from ._softmax_cross_entropy import int64_labels
from ._tensors import tensor_io

STATS = 4  # columns of the stats: max, sum of exp(z - max), target logit, sum of logits


_STATS_ARGUMENTS = ArrayArguments("logits_shard", "target")
_MERGE_ARGUMENTS = ArrayArguments("a", "b")
_LOSS_ARGUMENTS = ArrayArguments(
    "logits_shard",
    "target",
    "stats",
    optional=("grad_output", "out"),
    numbers=("grad_output",),
    in_place=("logits_shard",),
)


def _shard_arguments(call, class_start, ignore_index):
    """The shard's logits and int64 labels (the call's first two arrays), checked, with their
    dtype, ``class_start`` and ``ignore_index``."""
    z, target = call.arrays[:2]
    name = "logits_shard"
    dtype = _validate.float_array(name, z)
    _validate.ndim(name, z, 2, "an (N, C_shard) block of logit columns")
    n, width = z.shape
    _validate.integer_labels("target", target)
    _validate.same_shape("target", target, f"{name}'s rows", (n,))
    ignore = _validate.ignore_index(ignore_index)
    start = _validate.int64("class_start", class_start)
    if start < 0:
        raise ValueError(f"class_start must be >= 0, got {start}")
    if start + width > _validate.INT64_MAX:  # the kernels' label - class_start would wrap
        raise ValueError(
            f"class_start + the shard's {width} classes must fit int64, got class_start {start}"
        )
    return z, int64_labels(call.xp, target, ignore), dtype, start, ignore


def _class_count(num_classes, start: int, width: int) -> int:
    """``num_classes``, checked: an int64 with the shard's classes ``[start, start + width)``
    inside ``[0, num_classes)``."""
    num_classes = _validate.int64("num_classes", num_classes)
    if not start + width <= num_classes:
        raise ValueError(
            f"the shard's classes [{start}, {start + width}) must lie in "
            f"[0, num_classes={num_classes})"
        )
    return num_classes


@tensor_io(_STATS_ARGUMENTS)
def shard_stats(
    logits_shard,
    target,
    *,
    class_start: int,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
):
    r"""Per row of a shard of logit columns: ``[max, sum exp(z - max), z_target, sum z]``.

    ``logits_shard`` ``(N, C_s)`` holds the classes ``[class_start, class_start + C_s)`` of
    each row; ``target`` ``(N,)`` the rows' class indices over all classes. ``z_target`` is
    the target's logit if the target falls in this shard, else 0 (an ignored row's is not
    used, whatever it is).
    With ``softcap`` the logits are capped first, :math:`\kappa \tanh(z / \kappa)`.
    ``label_smoothing`` is accepted for symmetry with :func:`shard_loss_and_grad` (the sum
    of logits is always there). Returns ``(N, 4)`` float32 (float64 for float64).
    """
    call = _STATS_ARGUMENTS.call(logits_shard, target)
    z, labels, dtype, start, _ = _shard_arguments(call, class_start, ignore_index)
    _validate.label_smoothing(label_smoothing)
    cap = _validate.softcap(softcap)
    xp, acc = call.xp, accumulation_dtype(dtype)
    _validate.cap_in_range("softcap", cap, acc)
    stats = xp.empty((z.shape[0], STATS), acc)
    if z.shape[0]:
        call.ops("shard").shard_stats(z, labels, stats, start, cap)
    return stats


@tensor_io(_MERGE_ARGUMENTS)
def merge_shard_stats(a, b):
    r"""The stats of the union of two disjoint shards of the same rows:
    :math:`m = \max(m_a, m_b)`, :math:`S = S_a e^{m_a - m} + S_b e^{m_b - m}`, the target
    logits and the logit sums added. Associative and commutative up to float rounding.
    """
    call = _MERGE_ARGUMENTS.call(a, b)
    a, b = call.arrays
    for name, s in (("a", a), ("b", b)):
        _validate.float_array(name, s)
        _validate.ndim(name, s, 2, "(N, 4) shard stats")
    _validate.same_shape("b", b, "a", tuple(a.shape))
    if a.shape[1] != STATS:
        raise ValueError(f"a and b must be (N, {STATS}) shard stats, got shape {tuple(a.shape)}")
    xp = call.xp
    m = xp.maximum(a[:, 0], b[:, 0])
    safe = xp.where(xp.isneginf(m), 0, m)  # two empty shards: exp(-inf - -inf) would be NaN
    # +inf and -inf give NaN, as the whole row's CE does; a logit sum past the range is inf
    with np.errstate(invalid="ignore", over="ignore"):
        merged = a + b
        merged[:, 0] = m
        merged[:, 1] = a[:, 1] * xp.exp(a[:, 0] - safe) + b[:, 1] * xp.exp(b[:, 0] - safe)
    return merged


@tensor_io(_LOSS_ARGUMENTS)
def shard_loss_and_grad(
    logits_shard,
    target,
    stats,
    *,
    class_start: int,
    num_classes: int,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    out=None,
):
    r"""The loss of the whole rows and this shard's columns of its gradient, from the merged
    stats ``[m, S, z_y, sum z]`` of the whole rows.

    With :math:`\mathrm{lse} = m + \log S`, :math:`\varepsilon` the smoothing and :math:`V`
    the number of classes, a non-ignored row's loss is

    .. math::
        (1 - \varepsilon)(\mathrm{lse} - z_y) + \varepsilon\,\mathrm{lse}
        - \tfrac{\varepsilon}{V} \textstyle\sum_c z_c + \zeta\,\mathrm{lse}^2

    and its gradient in column :math:`c` is
    :math:`(1 + 2\zeta\,\mathrm{lse})\, p_c - (1 - \varepsilon)[c = y] - \varepsilon / V`,
    :math:`p_c = e^{z_c - m} / S`, times the reduction's scale (``"mean"``: over the
    non-ignored rows; a mean over none is 0) and through the softcap. Class weights are not
    offered. The same as ``softmax_cross_entropy`` on the whole rows, up to rounding. A
    class index outside ``[0, num_classes)`` that is not ``ignore_index`` raises
    ``ValueError`` (on a GPU the check costs one small device-to-host read).

    Returns:
        ``(loss, grad_shard)``: the loss (0-d, or ``(N,)`` with ``"none"``; float32 for
        16-bit logits) and the gradient of this shard's columns, like ``logits_shard``.
    """
    call = _LOSS_ARGUMENTS.call(logits_shard, target, stats, grad_output, out)
    _, target, st, grad_output, out = call.arrays
    z, labels, dtype, start, ignore = _shard_arguments(call, class_start, ignore_index)
    n, width = z.shape
    classes = _class_count(num_classes, start, width)
    _validate.float_array("stats", st)
    _validate.same_shape("stats", st, "(N, 4)", (n, STATS))
    _validate.reduction(reduction)
    eps = _validate.label_smoothing(label_smoothing)
    zl, cap = _validate.z_loss(z_loss), _validate.softcap(softcap)
    _validate.out_array(out, (n, width), dtype, call.library)
    _validate.grad_output(grad_output, reduction, (n,))
    xp, acc = call.xp, accumulation_dtype(dtype)
    _validate.cap_in_range("softcap", cap, acc)
    # a class outside [0, V) would fall in no shard and silently count as logit 0
    _validate.class_indices(xp, labels, classes, ignore, target)
    st = st.astype(acc, copy=False)
    grad = xp.empty((n, width), dtype) if out is None else out
    scale = upstream_scale(xp, grad_output, acc)
    if reduction == "mean":
        divisor = xp.asarray(xp.count_nonzero(labels != ignore)).astype(acc)
        scale = safe_divide(xp, scale, divisor)
    row_loss = xp.empty(n, acc)
    if n:
        call.ops("shard").shard_loss_and_grad(
            z, labels, st, scale, grad, row_loss, start, classes, ignore, eps, zl, cap
        )
    return reduced(call, row_loss, reduction, divisor if reduction == "mean" else None), grad


def reduced(call, row_loss, reduction: str, divisor=None):
    """The loss of per-row losses: themselves for ``"none"``, else their canonical sum,
    divided by ``divisor`` for ``"mean"`` (a 0-d array; 0 is taken as 1: a mean over
    nothing is 0)."""
    if reduction == "none":
        return row_loss
    total = canonical_sum(call, row_loss)
    if reduction == "mean":
        total = safe_divide(call.xp, total, divisor)
    return call.xp.asarray(total)
