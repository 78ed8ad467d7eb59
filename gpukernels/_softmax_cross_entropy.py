"""``softmax_cross_entropy``: the loss and its gradient in one fused pass over the logits."""

from __future__ import annotations

import numpy as np

from . import _validate
from ._common import absent, upstream_scale
from ._dispatch import ArrayArguments, accumulation_dtype
from ._kinds import REDUCTION_CODES
from ._tensors import tensor_io

_ARGUMENTS = ArrayArguments(
    "logits",
    "target",
    optional=("weight", "grad_output", "out"),
    numbers=("grad_output",),
    in_place=("logits",),
)


@tensor_io(_ARGUMENTS)
def softmax_cross_entropy(
    logits,
    target,
    *,
    reduction: str = "mean",
    weight=None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    grad_output=None,
    out=None,
    validate: bool = True,
    z_loss: float = 0.0,
    softcap: float | None = None,
    gradient: bool = True,
):
    r"""Softmax cross-entropy of ``logits`` against ``target`` and its gradient, fused.

    With :math:`p = \mathrm{softmax}(z)` per row and :math:`a` the weighted, smoothed target
    (class indices: :math:`a_c = (1-\varepsilon) w_y [c = y] + \tfrac{\varepsilon}{C} w_c`;
    probabilities: :math:`a_c = w_c ((1-\varepsilon) t_c + \tfrac{\varepsilon}{C})`):

    .. math::
        \ell_i = -\sum_c a_c \log p_c, \qquad
        \frac{\partial \ell_i}{\partial z_c} = \Big(\sum_k a_k\Big) p_c - a_c

    (``p - y`` without weights and smoothing), times the reduction's scale: ``"mean"``
    divides by :math:`\sum_i w_{y_i}` over non-ignored rows (class indices) or by ``N``
    (probabilities); ``"sum"`` by 1; ``"none"`` keeps per-row losses. Semantics are those of
    ``torch.nn.functional.cross_entropy``, except that a mean over nothing (an empty batch,
    every row ignored) is 0 with a zero gradient. A weighted ``"mean"`` whose rows' class
    weights sum to 0 is PyTorch's 0/0: a NaN loss and NaN gradients on the rows that take part
    (ignored rows keep a zero gradient). The row's log-sum-exp is max-subtracted: stable for
    any finite logits.

    ``z_loss`` adds PaLM's auxiliary :math:`\zeta\, \mathrm{lse}_i^2` to every non-ignored
    row (not class-weighted; a ``"mean"`` divides it by the same divisor), so the gradient
    gains :math:`2 \zeta\, \mathrm{lse}_i\, p`. ``softcap`` :math:`= \kappa` first caps the
    logits, :math:`z' = \kappa \tanh(z / \kappa)` (Gemma 2): the loss is that of :math:`z'`
    and the gradient is taken through the cap, times :math:`1 - (z' / \kappa)^2`. Both are
    computed in the same fused pass.

    ``gradient=False`` computes the loss alone, as an evaluation needs it: no gradient is
    allocated or written (the pass over the logits only reads them), and the loss has the
    same bits as with the gradient.

    Args:
        logits: ``(N, C)`` float16/bfloat16/float32/float64.
        target: ``(N,)`` integer class indices, or ``(N, C)`` class probabilities.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: optional ``(C,)`` per-class weight.
        ignore_index: class index whose rows are skipped (class-index targets); an integer
            that fits int64.
        label_smoothing: :math:`\varepsilon`, a real number in ``[0, 1]``.
        grad_output: upstream gradient: a scalar, or with ``"none"`` an ``(N,)`` array.
        out: array to write the gradient into; may be ``logits`` itself (in place).
        validate: check class indices (one small device-to-host read on a GPU): a bad one
            raises ``ValueError`` after the pass, so ``out`` has been written by then. With
            ``False`` a bad index gives that row a zero gradient and a NaN loss.
        z_loss: :math:`\zeta \ge 0`, the factor of the squared log-sum-exp.
        softcap: ``None``, or :math:`\kappa > 0` to cap the logits.
        gradient: ``False`` for the loss alone (then ``out`` must be ``None``).

    Returns:
        ``(loss, grad)``: ``loss`` 0-d (or ``(N,)`` for ``"none"``), float32 for 16-bit
        logits; ``grad`` like ``logits``, ``None`` with ``gradient=False``.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> z = np.array([[2.0, 0.0, -1.0]])
        >>> loss, grad = gk.softmax_cross_entropy(z, np.array([0]))
        >>> round(float(loss), 4), grad.round(3).tolist()
        (0.1698, [[-0.156, 0.114, 0.042]])
    """
    call = _ARGUMENTS.call(logits, target, weight, grad_output, out)
    logits, target, weight, grad_output, out = call.arrays
    dtype = _validate.float_array("logits", logits)
    _validate.ndim("logits", logits, 2, "a (N, C) batch of logit rows")
    _validate.reduction(reduction)
    validate = _validate.yes_no("validate", validate)
    gradient = _validate.gradient_wanted(gradient, out)
    label_smoothing = _validate.label_smoothing(label_smoothing)
    z_loss, softcap = _validate.z_loss(z_loss), _validate.softcap(softcap)
    ignore_index = _validate.ignore_index(ignore_index)
    n, c = logits.shape
    _validate.class_weight(weight, c)
    class_indices = _validate.class_target(target, n, c, ignore_index)
    _validate.out_array(out, (n, c), dtype, call.library)
    _validate.grad_output(grad_output, reduction, (n,))
    _validate.some_class("logits", n, c, "C")

    xp, acc = call.xp, accumulation_dtype(dtype)
    _validate.cap_in_range("softcap", softcap, acc)
    grad = None  # the loss alone (validated: no out then)
    if gradient:
        grad = xp.empty((n, c), dtype) if out is None else out
    if n == 0:
        if grad is not None:
            grad[...] = 0
        return xp.zeros((0,) if reduction == "none" else (), acc), grad

    # one launch: the divisor of a mean, the rows, and the reduction
    ops = call.ops("softmax_xent")
    w = absent(xp, acc) if weight is None else weight.astype(acc, copy=False)
    scale = upstream_scale(xp, grad_output, acc, none_as_empty=True)
    row_loss, loss = xp.empty(n, acc), xp.empty(1, acc)
    code = REDUCTION_CODES[reduction]
    if class_indices:
        bad = xp.empty(1, np.int64)
        ops.softmax_xent_labels(
            logits,
            int64_labels(xp, target, ignore_index),
            w,
            scale,
            grad,
            row_loss,
            loss,
            bad,
            ignore_index,
            label_smoothing,
            z_loss,
            softcap,
            code,
        )
        if validate:  # on a GPU, the one read back to the host
            _validate.bad_class_index(int(bad[0]), target, c, ignore_index)
    else:
        ops.softmax_xent_probs(
            logits, target, w, scale, grad, row_loss, loss, label_smoothing, z_loss, softcap, code
        )
    return (row_loss if reduction == "none" else loss[0, ...]), grad


def int64_labels(xp, target, ignore_index: int):
    """Class indices as int64. uint64 ones past int64's range would wrap to negative numbers,
    even to ``ignore_index``: they become int64's largest value first, or the one below it
    when that is ``ignore_index``, so that they stay out of range and are never ignored."""
    dtype = target.dtype
    if dtype == np.int64:
        return target
    if dtype.kind == "u" and dtype.itemsize == 8:  # either byte order
        largest = np.uint64(_validate.INT64_MAX)
        past = largest - np.uint64(ignore_index == _validate.INT64_MAX)
        target = xp.where(target > largest, past, target)
    return target.astype(np.int64)
