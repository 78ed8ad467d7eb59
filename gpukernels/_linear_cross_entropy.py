"""``linear_cross_entropy``: a classifier's last layer and its cross-entropy, without ever
holding the ``(N, V)`` logits.

Rows are taken in chunks: a chunk's logits come from the array library's matrix product
(BLAS through NumPy, cuBLAS through CuPy), the fused cross-entropy kernel turns them into
their gradient in place, and two more products give the chunk's input gradient and its share
of the weight gradient, accumulated in float32 (float64 for float64).
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate
from ._batch_sum import canonical_sum
from ._common import absent, safe_divide, upstream_scale
from ._dispatch import ArrayArguments, accumulation_dtype
from ._dtypes import WIDENED
from ._softmax_cross_entropy import int64_labels, softmax_cross_entropy
from ._tensors import tensor_io

CHUNK_BYTES = 256 * 2**20  # a chunk's logits, by default


_ARGUMENTS = ArrayArguments(
    "input",
    "linear_weight",
    "target",
    optional=("linear_bias", "weight", "grad_output"),
    numbers=("grad_output",),
)


@tensor_io(_ARGUMENTS)
def linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    chunk_size: int | None = None,
    validate: bool = True,
):
    r"""Cross-entropy of ``input @ linear_weight.T + linear_bias`` and the gradients of its
    three arguments, one chunk of rows at a time.

    With :math:`z = x W^\top + b` and :math:`g = \partial L / \partial z` the fused
    cross-entropy gradient (``softmax_cross_entropy``'s, with every option and the upstream
    gradient applied per row):

    .. math::
        \frac{\partial L}{\partial x} = g W, \qquad
        \frac{\partial L}{\partial W} = g^\top x, \qquad
        \frac{\partial L}{\partial b} = \sum_i g_i

    The same loss as ``softmax_cross_entropy(input @ linear_weight.T + linear_bias, target,
    ...)`` with the same options, up to float rounding, whatever the chunk size. Rows whose
    target is ``ignore_index`` are skipped (their input gradient is 0; on a GPU finding them
    costs one small device-to-host read). Extra memory: one chunk of logits (default: about
    256 MiB, or 1/8 of the free GPU memory); from the second chunk on, the ``(V, H)``
    product added to the weight gradient (the first is written into it); the float32
    (float64) accumulators of the weight and bias gradients; for 16-bit inputs, a float32
    copy of the weight on the CPU, and on a GPU float32 copies of a chunk's gradient and
    rows for the weight-gradient product.

    Args:
        input: ``(N, H)`` float.
        linear_weight: ``(V, H)``, ``input``'s dtype.
        target: ``(N,)`` integer class indices in ``[0, V)`` or ``ignore_index``.
        linear_bias: optional ``(V,)``, ``input``'s dtype.
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap, validate: as for
            ``softmax_cross_entropy``.
        grad_output: upstream gradient: a scalar, or with ``"none"`` an ``(N,)`` array.
        chunk_size: rows per chunk (a positive integer), or ``None`` for the default.

    Returns:
        ``(loss, grad_input, grad_linear_weight, grad_linear_bias)``, the last ``None``
        without a bias; each gradient has its argument's shape and dtype.

    Example:
        >>> import numpy as np, gpukernels as gk
        >>> x, w = np.ones((2, 3)), np.arange(12.0).reshape(4, 3) / 10
        >>> loss, gx, gw, gb = gk.linear_cross_entropy(x, w, np.array([3, 0]))
        >>> round(float(loss), 4), gx.shape, gw.shape, gb
        (1.8441, (2, 3), (4, 3), None)
    """
    return _linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad_output=grad_output,
        chunk_size=chunk_size,
        validate=validate,
    )[:4]


def _linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output=None,
    chunk_size: int | None = None,
    validate: bool = True,
    headroom: float = 1.0,
    gradients: bool = True,
):
    """:func:`linear_cross_entropy`'s results and the headroom its input, weight and bias
    gradients kept, a ``(3,)`` array; with ``gradients=False`` the loss alone (the
    gradients ``None``: no product but the logits' and no gradient of them, as
    ``gpukernels.torch``'s ``"none"`` forward pass needs).

    The gradients are computed times ``headroom``, a power of two (for ``gpukernels.torch``'s
    float16 means, see ``_torch_ops.float16_headroom``), besides ``grad_output``. All of it
    could take them past float16's range (the weight and bias gradients are sums over the
    rows; the input gradient's rows are larger than ``1/N`` of the loss's where few rows
    take part, or where the weights are large): each keeps the largest part of it that
    leaves its entries below ``2^15`` (:func:`fit_headroom`), the input gradient
    accumulated in the accumulation dtype until then."""
    call = _ARGUMENTS.call(input, linear_weight, target, linear_bias, weight, grad_output)
    x, w_lin, target, bias, weight, grad_output = call.arrays
    dtype = _validate.float_array("input", x)
    _validate.ndim("input", x, 2, "an (N, H) batch of rows")
    _validate.ndim("linear_weight", w_lin, 2, "a (V, H) weight")
    n, h = x.shape
    v = w_lin.shape[0]
    _validate.same_dtype("linear_weight", w_lin, "input", dtype)
    _validate.same_shape("linear_weight", w_lin, "(V, the input's H)", (v, h))
    if bias is not None:
        _validate.same_dtype("linear_bias", bias, "input", dtype)
        _validate.same_shape("linear_bias", bias, "(V,)", (v,))
    _validate.integer_labels("target", target)
    _validate.same_shape("target", target, "the input's rows", (n,))
    _validate.class_weight(weight, v)
    _validate.reduction(reduction)
    validate = _validate.yes_no("validate", validate)
    _validate.grad_output(grad_output, reduction, (n,))
    ignore_index = _validate.ignore_index(ignore_index)
    # checked here too: with no row taking part no chunk would reach softmax_cross_entropy
    label_smoothing = _validate.label_smoothing(label_smoothing)
    z_loss = _validate.z_loss(z_loss)
    chunk_size = _validate.chunk_size(chunk_size)
    _validate.some_class("linear_weight", n, v, "V")

    xp, acc = call.xp, accumulation_dtype(dtype)
    _validate.cap_in_range("softcap", _validate.softcap(softcap), acc)
    labels = int64_labels(xp, target, ignore_index)
    if validate:
        _validate.class_indices(xp, labels, v, ignore_index, target)
    scale = upstream_scale(xp, grad_output, acc)
    if headroom != 1.0:
        scale = scale * headroom  # a power of two: exact
    if reduction == "mean":
        w_acc = absent(xp, acc) if weight is None else weight.astype(acc)
        divisor = label_mean_divisor(call, labels, w_acc, weight is not None, ignore_index, v)
        scale = safe_divide(xp, scale, divisor)

    # 16-bit products on the CPU have no BLAS: the chunks are computed in float32
    compute = acc if xp is np and dtype in WIDENED else dtype
    w_c = w_lin.astype(compute, copy=False)
    b_c = None if bias is None else bias.astype(compute, copy=False)
    rows = xp.flatnonzero(labels != ignore_index)
    every_row = int(rows.shape[0]) == n  # then chunks are slices: views, no gathers
    chunk = chunk_size or _default_chunk(xp, v, np.dtype(compute).itemsize)

    count = int(rows.shape[0])
    grad_x = grad_w = grad_b = None
    if gradients:
        grad_x = xp.zeros((n, h), dtype if headroom == 1.0 else acc)  # acc: fitted, then cast
        # the first chunk's product is written into grad_w; with no chunk it stays 0
        grad_w = xp.empty((v, h), acc) if count else xp.zeros((v, h), acc)
        grad_b = None if bias is None else xp.zeros(v, acc)
    row_loss = xp.zeros(n, acc) if reduction == "none" else None
    sums = []
    buffer = xp.empty((min(chunk, count), v), compute)  # every chunk's logits, in turn
    for start in range(0, count, chunk):
        idx = slice(start, start + chunk) if every_row else rows[start : start + chunk]
        x_c = x[idx].astype(compute, copy=False)
        logits = buffer[: x_c.shape[0]]
        xp.matmul(x_c, w_c.T, out=logits)
        if b_c is not None:
            logits += b_c
        loss_c, g = softmax_cross_entropy(
            logits,
            labels[idx],
            reduction="none" if reduction == "none" else "sum",
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            grad_output=scale.reshape(()) if scale.shape[0] == 1 else scale[idx],
            out=logits if gradients else None,
            validate=False,
            gradient=gradients,
        )
        if gradients:
            grad_x[idx] = (g @ w_c).astype(grad_x.dtype, copy=False)
            g_acc, x_acc = g.T.astype(acc, copy=False), x_c.astype(acc, copy=False)
            if start == 0:  # no (V, H) temporary to add
                xp.matmul(g_acc, x_acc, out=grad_w)
            else:
                grad_w += g_acc @ x_acc
            if grad_b is not None:
                grad_b += g.sum(axis=0, dtype=acc)
        if row_loss is None:
            sums.append(loss_c)
        else:
            row_loss[idx] = loss_c

    if row_loss is not None:
        loss = row_loss
    else:
        loss = sum(sums, xp.zeros((), acc))
        if reduction == "mean":
            loss = safe_divide(xp, loss, divisor)
        loss = xp.asarray(loss, dtype=acc)
    kept = xp.full(3, headroom, acc)
    if not gradients:
        return loss, None, None, None, kept
    if headroom != 1.0:
        for k, grad in enumerate((grad_x, grad_w, grad_b)):
            if grad is not None:
                kept[k] = fit_headroom(xp, grad, headroom)
    grad_x = grad_x.astype(dtype, copy=False)
    grad_w = grad_w.astype(w_lin.dtype, copy=False)
    grad_b = None if grad_b is None else grad_b.astype(bias.dtype, copy=False)
    return loss, grad_x, grad_w, grad_b, kept


FITTED_MAX_EXPONENT = 15  # a gradient under a headroom keeps its entries below 2^15


def fit_headroom(xp, grad, headroom: float):
    """Divides ``grad``, computed times the power of two ``headroom``, by the least power of
    two ``2^j <= headroom`` that leaves every entry below ``2^15`` (``|g| < 2^e`` with ``e``
    from ``frexp``, ``j = e - 15`` clipped to ``[0, log2 headroom]``); returns the headroom
    it keeps, ``headroom / 2^j``, 0-d. Array operations only (``xp`` NumPy, CuPy or
    ``torch``): on a GPU nothing waits for it."""
    magnitude = xp.abs(grad)
    largest = magnitude.max() if math.prod(grad.shape) else magnitude.sum()  # empty: 0
    _, exponent = xp.frexp(largest)  # 0 for 0, inf and NaN: their gradient keeps it all
    steps = xp.clip(exponent - FITTED_MAX_EXPONENT, 0, int(headroom).bit_length() - 1)
    factor = xp.ldexp(xp.ones_like(largest), -steps)
    grad *= factor
    return headroom * factor


# gpukernels.torch's entry, tensors in and out
headroom_linear_cross_entropy = tensor_io(_ARGUMENTS)(_linear_cross_entropy)


def _default_chunk(xp, num_classes: int, itemsize: int) -> int:
    """Rows whose logits take about ``CHUNK_BYTES``, or on a GPU 1/8 of its free memory."""
    budget = CHUNK_BYTES
    if xp is not np:
        free, _ = xp.cuda.Device().mem_info
        budget = min(budget, free // 8)
    return max(1, budget // max(1, num_classes * itemsize))


def label_mean_divisor(call, labels, w, weighted: bool, ignore_index: int, num_classes: int):
    """The ``"mean"`` divisor of class-index targets: the canonical sum of the class weights
    ``w`` (``acc``, empty for none) of the rows taking part, a 0-d array on the data's device
    (nothing read back). With weights, see :func:`_weighted_mean_divisor`."""
    row_weight = call.xp.empty(labels.shape[0], w.dtype)
    call.ops("softmax_xent").label_row_weights(labels, w, row_weight, ignore_index, num_classes)
    divisor = canonical_sum(call, row_weight)
    if weighted:
        divisor = _weighted_mean_divisor(call.xp, divisor, labels, ignore_index, num_classes)
    return divisor


def _weighted_mean_divisor(xp, weight_sum, labels, ignore_index: int, num_classes: int):
    """The weighted mean's divisor, a 0-d array on the data's device (nothing read back).

    No row taking part (every row ignored): 1, so the mean is 0 with a zero gradient. Rows
    taking part whose class weights sum to 0: NaN, so the loss and those rows' gradients are
    NaN as PyTorch's 0/0 makes them. Otherwise the weight sum.
    """
    taking_part = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    rows = xp.asarray(xp.count_nonzero(taking_part))
    nan = xp.full((), np.nan, weight_sum.dtype)
    return xp.where(rows == 0, 1, xp.where(weight_sum == 0, nan, weight_sum)).astype(
        weight_sum.dtype
    )
