"""``bce_with_logits``, ``mse`` and ``huber_loss``: one launch of the op table's
elementwise-loss launcher (``loss_and_grad``) writes the gradient and the reduced loss."""

from __future__ import annotations

import numpy as np

from . import _validate
from ._canon import tile_count
from ._common import FlatOutput, absent, flat_input, upstream_scale
from ._dispatch import ArrayArguments, accumulation_dtype
from ._dtypes import companion_dtype
from ._kinds import REDUCTION_CODES
from ._tensors import tensor_io


def _loss_arguments(pred_name: str, *extra: str) -> ArrayArguments:
    """An elementwise loss's array arguments, in the order of its signature: the prediction,
    the target, the optional ``extra`` ones, ``grad_output`` and ``out``."""
    return ArrayArguments(
        pred_name,
        "target",
        optional=(*extra, "grad_output", "out"),
        numbers=("grad_output",),
        in_place=(pred_name,),
    )


_PRED_ARGUMENTS = _loss_arguments("pred")
_BCE_ARGUMENTS = _loss_arguments("logits", "weight", "pos_weight")


def _begin(arguments: ArrayArguments, reduction, allowed, gradient, *values):
    """The elementwise losses' common start: adopt and check the arguments ``values`` (in the
    order of ``arguments``) and ``gradient``.

    Returns the call, the prediction, the target as the kernel reads it (1-D, in the
    prediction's dtype or, if it has another one, the accumulation dtype) and whether the
    gradient is wanted.
    """
    call = arguments.call(*values)
    pred_name = arguments.names[0]
    x, t = call.arrays[:2]
    grad_output, out = call.arrays[-2:]
    dtype = _validate.float_array(pred_name, x)
    _validate.float_array("target", t)
    shape = tuple(x.shape)
    _validate.same_shape("target", t, pred_name, shape)
    _validate.reduction(reduction, allowed)
    wanted = _validate.gradient_wanted(gradient, out)
    _validate.out_array(out, shape, dtype, call.library)
    _validate.grad_output(grad_output, reduction, shape)
    return call, x, flat_input(call.xp, t, companion_dtype(t.dtype, dtype)), wanted


def _finish(call, op, x, target, weight, param, divisor, reduction, gradient: bool):
    """The elementwise losses' common end: one launch of ``op``'s ``loss_and_grad``, which
    writes the gradient (unless ``gradient`` is false: ``None``) and reduces the losses.

    ``weight`` and ``param`` are the launcher's (``None`` for none); ``divisor`` the mean's
    denominator (a Python int; 0 for a mean over nothing, which is 0 with a zero gradient).
    """
    xp, dtype = call.xp, x.dtype
    acc = accumulation_dtype(dtype)
    weight = absent(xp, acc) if weight is None else weight
    param = absent(xp, acc) if param is None else param
    shape, n = tuple(x.shape), int(x.size)
    grad_output, out = call.arrays[-2:]
    grad = FlatOutput(xp, out, shape, dtype) if gradient else None
    reduce = reduction != "none"
    loss = xp.empty(max(1, tile_count(n)) if reduce else n, acc)
    if n:
        call.ops(op).loss_and_grad(
            flat_input(xp, x),
            target,
            weight,
            param,
            upstream_scale(xp, grad_output, acc, none_as_empty=True),
            None if grad is None else grad.flat,
            loss,
            REDUCTION_CODES["mean" if reduction == "batchmean" else reduction],
            max(1, divisor),
        )
    elif reduce:
        loss[...] = 0
    grad = None if grad is None else grad.result()
    return (loss[0, ...] if reduce else loss.reshape(shape)), grad


_REDUCTIONS = ("mean", "sum", "none")


@tensor_io(_BCE_ARGUMENTS)
def bce_with_logits(
    logits,
    target,
    *,
    reduction: str = "mean",
    weight=None,
    pos_weight=None,
    grad_output=None,
    out=None,
    gradient: bool = True,
):
    r"""Binary cross-entropy on logits, and its gradient, in one pass.

    With :math:`\sigma` the sigmoid, :math:`w` the weight and :math:`p_w` the positive
    weight (along the last axis), :math:`l_w = 1 + (p_w - 1) y`:

    .. math::
        \ell = w \big[(1 - y) z + l_w \log(1 + e^{-z})\big], \qquad
        \frac{\partial \ell}{\partial z} = w \big[l_w \sigma(z) - p_w y\big]

    (``w (sigma(z) - y)`` without ``pos_weight``), computed from :math:`e^{-|z|}` so that
    nothing overflows for large :math:`|z|`. Semantics of
    ``torch.nn.functional.binary_cross_entropy_with_logits``; ``"mean"`` divides by the
    number of elements, and a mean over nothing is 0.

    Args:
        logits: any shape, float16/bfloat16/float32/float64.
        target: same shape, values in [0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: optional, broadcasts to ``logits``' shape.
        pos_weight: optional, broadcasts to ``logits``' shape (usually one weight per
            class, along the last axis).
        grad_output: upstream gradient: a scalar, or with ``"none"`` an array of the shape.
        out: array to write the gradient into; may be ``logits`` itself.
        gradient: ``False`` for the loss alone, as an evaluation wants it (no gradient
            allocated or written; the same loss bits); then ``out`` must be ``None``.

    Returns:
        ``(loss, grad)``; loss is 0-d, or ``logits``' shape for ``"none"``; ``grad`` like
        ``logits``, ``None`` with ``gradient=False``.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> loss, grad = gk.bce_with_logits(np.array([0.0, 2.0]), np.array([1.0, 0.0]))
        >>> round(float(loss), 4), grad.round(4).tolist()
        (1.41, [-0.25, 0.4404])
    """
    call, x, t, gradient = _begin(
        _BCE_ARGUMENTS,
        reduction,
        _REDUCTIONS,
        gradient,
        logits,
        target,
        weight,
        pos_weight,
        grad_output,
        out,
    )
    xp, acc = call.xp, accumulation_dtype(x.dtype)
    shape = tuple(x.shape)
    w, pw = call.arrays[2:4]
    if w is not None:
        _validate.float_array("weight", w)
        _validate.broadcastable("weight", w, shape)
        w = flat_input(xp, xp.broadcast_to(w.astype(acc, copy=False), shape))
    if pw is not None:
        _validate.float_array("pos_weight", pw)
        _validate.broadcastable("pos_weight", pw, shape)
        pw = pw.astype(acc, copy=False)
        # one weight per class (along the last axis: the usual case) stays a vector the
        # kernel reads with period L; any other shape is spread over the logits, like weight
        per_class = all(d == 1 for d in pw.shape[:-1])
        pw = flat_input(xp, pw.reshape(pw.shape[-1:]) if per_class else xp.broadcast_to(pw, shape))
    divisor = x.size if reduction == "mean" else 1
    return _finish(call, "bce", x, t, w, pw, divisor, reduction, gradient)


@tensor_io(_PRED_ARGUMENTS)
def mse(
    pred, target, *, reduction: str = "mean", grad_output=None, out=None, gradient: bool = True
):
    r"""Mean squared error and its gradient in one pass.

    .. math::
        L = \frac{1}{D} \sum_i (p_i - t_i)^2, \qquad
        \frac{\partial L}{\partial p_i} = \frac{2 (p_i - t_i)}{D}

    with :math:`D` the number of elements for ``"mean"`` (PyTorch's ``mse_loss``),
    ``pred.shape[0]`` for ``"batchmean"`` (the seeds' convention), 1 for ``"sum"``; ``"none"``
    returns the elementwise squares. A mean over nothing is 0.

    Args:
        pred: any shape, float16/bfloat16/float32/float64.
        target: same shape.
        reduction: ``"mean"``, ``"batchmean"``, ``"sum"`` or ``"none"``.
        grad_output: upstream gradient: a scalar, or with ``"none"`` an array of the shape.
        out: array to write the gradient into; may be ``pred`` itself.
        gradient: ``False`` for the loss alone (``grad`` ``None``; ``out`` must be ``None``).

    Returns:
        ``(loss, grad)``; loss is 0-d, or ``pred``'s shape for ``"none"``; ``grad`` like
        ``pred``, ``None`` with ``gradient=False``.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> loss, grad = gk.mse(np.array([8.0]), np.array([2.0]), reduction="sum")
        >>> float(loss), grad.tolist()
        (36.0, [12.0])
    """
    allowed = ("mean", "batchmean", "sum", "none")
    call, x, t, gradient = _begin(
        _PRED_ARGUMENTS, reduction, allowed, gradient, pred, target, grad_output, out
    )
    if reduction == "batchmean" and x.ndim == 0:
        raise ValueError("reduction='batchmean' needs pred with a batch axis (ndim >= 1)")
    batch = x.shape[0] if x.ndim else 1
    divisor = {"mean": x.size, "batchmean": batch, "sum": 1, "none": 1}[reduction]
    return _finish(call, "mse", x, t, None, None, divisor, reduction, gradient)


@tensor_io(_PRED_ARGUMENTS)
def huber_loss(
    pred,
    target,
    *,
    delta: float = 1.0,
    reduction: str = "mean",
    grad_output=None,
    out=None,
    gradient: bool = True,
):
    r"""Huber loss and its gradient in one pass (``torch.nn.functional.huber_loss``).

    With :math:`d = p - t`:

    .. math::
        \ell = \begin{cases} \tfrac12 d^2 & |d| \le \delta \\
        \delta \left(|d| - \tfrac12 \delta\right) & \text{otherwise} \end{cases}, \qquad
        \frac{\partial \ell}{\partial p} = \mathrm{clip}(d, -\delta, \delta)

    quadratic near the target and linear beyond ``delta`` (the box loss of object
    localisation; PyTorch's ``smooth_l1_loss`` with ``beta`` is this divided by ``beta``).
    ``"mean"`` divides by the number of elements; a mean over nothing is 0.

    Args:
        pred: any shape, float16/bfloat16/float32/float64.
        target: same shape.
        delta: the threshold between the quadratic and the linear part, a finite number > 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        grad_output: upstream gradient: a scalar, or with ``"none"`` an array of the shape.
        out: array to write the gradient into; may be ``pred`` itself.
        gradient: ``False`` for the loss alone (``grad`` ``None``; ``out`` must be ``None``).

    Returns:
        ``(loss, grad)``; loss is 0-d, or ``pred``'s shape for ``"none"``; ``grad`` like
        ``pred``, ``None`` with ``gradient=False``.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> loss, grad = gk.huber_loss(np.array([0.5, 3.0]), np.zeros(2), reduction="sum")
        >>> float(loss), grad.tolist()
        (2.625, [0.5, 1.0])
    """
    call, x, t, gradient = _begin(
        _PRED_ARGUMENTS, reduction, _REDUCTIONS, gradient, pred, target, grad_output, out
    )
    delta = _validate.real_number("delta", delta)
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0, got {delta}")
    acc = accumulation_dtype(x.dtype)
    param = call.xp.full(1, _validate.saturated(delta, acc), acc)
    divisor = x.size if reduction == "mean" else 1
    return _finish(call, "huber", x, t, None, param, divisor, reduction, gradient)
