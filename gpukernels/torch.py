r"""PyTorch losses with autograd, on the fused kernels: ``gpukernels.torch``.

Where a backward pass can follow, each loss computes its gradient in the forward pass (one
fused kernel over the input) and saves it; ``backward`` only scales it by the upstream
gradient (a scalar, or per row or element for ``reduction="none"``), so a loss costs one
pass over the logits. Where none can (``torch.no_grad()``, an input not requiring grad), the
kernel computes the loss alone. The kernels are
registered as PyTorch custom ops (``torch.ops.gpukernels.*``), so ``torch.compile(...,
fullgraph=True)`` keeps them in its graph. Names and argument order follow
``torch.nn.functional`` and ``torch.nn``: drop-in where the arguments match.

The losses are once differentiable: the gradient is a saved tensor, not a function of the
input, so a second derivative (``create_graph=True``, a gradient penalty) raises
``RuntimeError`` rather than silently treating it as a constant. ``inplace_backward=True``
(cross-entropy) writes the gradient over the input's memory and marks the input modified:
autograd raises if anything else still needs the old values.

>>> import torch, gpukernels.torch as gkt
>>> logits = torch.randn(4, 10, requires_grad=True)
>>> loss = gkt.cross_entropy(logits, torch.tensor([1, 0, 3, 9]))
>>> loss.backward()
>>> logits.grad.shape
torch.Size([4, 10])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.autograd import forward_ad

from . import _validate
from ._composite_loss import LossTerm, batches
from ._torch_distributed import vocab_parallel_cross_entropy
from ._torch_ops import (
    batch_rows,
    bce_op,
    composite_op,
    cross_entropy_inplace_op,
    cross_entropy_op,
    fit_to_float16,
    float16_headroom,
    huber_op,
    layout_of,
    linear_cross_entropy_op,
    mse_op,
    no_gradient_for,
    optional_tensors,
    overridable,
    refuse_second_derivative,
    run,
    scaled,
    scaled_by_kept,
    tensors,
    unit,
    weights_of,
)

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "HuberLoss",
    "LinearCrossEntropyLoss",
    "MSELoss",
    "binary_cross_entropy_with_logits",
    "composite_loss",
    "cross_entropy",
    "huber_loss",
    "linear_cross_entropy",
    "mse_loss",
    "vocab_parallel_cross_entropy",
]

Tensor = torch.Tensor


# ----------------------------------------------------------------------- autograd


class _FusedLoss(torch.autograd.Function):
    """``op(input, target, *weights, *options, headroom) -> (loss, grad)``, the gradient
    times ``headroom`` (see ``float16_headroom``; fitted to float16, :func:`fitted_float16`),
    ``weights`` those of ``weight`` and ``pos_weight`` the op takes (``weights_of``);
    backward scales the saved ``grad`` by the upstream gradient over the headroom kept.

    Every tensor is an argument of its own (``torch.jit.trace`` records those alone), the
    other options one tuple, not ``*args``: where no input requires grad, ``torch.compile``
    calls ``forward`` without ``ctx`` whenever the arguments outnumber its parameters by
    one, and a starred parameter counts as one."""

    @staticmethod
    def forward(ctx, op, headroom, input, target, weight, pos_weight, options):
        tensors = (input, target, *weights_of(op, weight, pos_weight))
        if headroom == 1.0:
            loss, grad = run(op, *tensors, *options, headroom)
            kept = None
        else:
            loss, grad, kept = fitted_float16(op, headroom, tensors, options)
        ctx.save_for_backward(grad, kept)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad = scaled_by_kept(*ctx.saved_tensors, grad_loss)
        return None, None, grad, None, None, None, None


def fitted_float16(op, headroom: float, tensors: tuple, options: tuple) -> tuple:
    """``(loss, grad, kept)`` of a float16 mean computed with a ``headroom`` (see
    ``float16_headroom``): in float32, the dtype the kernels compute float16 in (the same
    loss, bit for bit), the gradient times ``headroom`` then divided by as much of it as
    float16 needs to hold every entry (``fit_headroom``) and rounded to float16; ``kept``
    is the part left in it, a 0-d tensor (nothing read back). The headroom assumes gradients
    of about 1 / N; a mean over fewer rows than N (ignored rows, ``only_where``), class
    weights or a z-loss can make them larger, and multiplied by it they would pass
    float16's range."""
    wide = [t.float() if t is not None and t.dtype is torch.float16 else t for t in tensors]
    loss, grad = run(op, *wide, *options, headroom)
    return loss, *fit_to_float16(grad, headroom)


class _FusedLossInPlace(torch.autograd.Function):
    """Cross-entropy whose gradient replaces ``input``, which is marked modified. The first
    backward scales the gradient where it is (unless the upstream gradient is known to be 1:
    CPU tensors only) and hands that memory to autograd, which may keep it (as a leaf's
    ``.grad``, where the gradient reaches the leaf unchanged through ``clone`` or ``cat``).
    A later backward through the same graph (``retain_graph=True``) therefore scales a new
    tensor, never that memory; it is refused where the first scaled the memory (the unscaled
    gradient is gone), and autograd refuses it where what kept the memory has changed it
    since (the saved tensor's version moved on: a ``.grad`` accumulated into)."""

    @staticmethod
    def forward(ctx, input, headroom, target, weight, options):
        # (input's version moves on even where this raises after writing it, a class index
        # out of range found in the pass: autograd refuses whatever saved the logits)
        loss = run(cross_entropy_inplace_op, input, target, weight, *options, headroom)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        ctx.headroom, ctx.handed_out, ctx.rescaled = headroom, False, False
        return loss, input

    @staticmethod
    def backward(ctx, grad_loss, grad_of_input_after):
        # (traced by torch.compile, every output has a gradient: the check is eager's)
        if grad_of_input_after is not None and not torch.compiler.is_compiling():
            raise RuntimeError(
                "cross_entropy(inplace_backward=True) overwrote input with the gradient, and "
                "input was used again after the call in what is being differentiated (its "
                "values there were the gradient, not the logits): use input before the loss, "
                "or inplace_backward=False"
            )
        if ctx.rescaled:
            raise RuntimeError(
                "cross_entropy(inplace_backward=True) scaled its gradient in place in an "
                "earlier backward pass (one whose upstream gradient was not known to be 1: "
                "any on a GPU), so it cannot run another (retain_graph=True): use "
                "inplace_backward=False"
            )
        if grad_loss is None:  # the loss is not differentiated: neither is input
            return None, None, None, None, None
        (grad,) = ctx.saved_tensors
        one = ctx.headroom == 1.0 and unit(grad_loss)
        in_place = not ctx.handed_out
        grad = scaled(grad, grad_loss, in_place=in_place, one=one, headroom=ctx.headroom)
        # (a second derivative was refused before: nothing scaled or handed out)
        ctx.handed_out, ctx.rescaled = True, in_place and not one
        return grad, None, None, None, None


class _LinearCrossEntropy(torch.autograd.Function):
    """The fused output layer: the gradients come from the forward pass (``"mean"`` and
    ``"sum"``: scaled in backward). With ``"none"`` the per-row upstream gradient must enter
    before the matrix products, so the forward pass computes the loss alone and backward
    runs the chunks again with it: one matrix product a chunk, not three. Where no backward
    can follow, :func:`linear_cross_entropy` computes the loss alone without this function
    (but under ``torch.jit.trace``, which records it always: nothing requiring grad then
    computes the loss alone here)."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, weight, headroom, options):
        reduction = options[0]
        differentiated = any(ctx.needs_input_grad[:3])
        # the gradients times headroom (see float16_headroom): a float16 mean's stay normal
        # numbers; each keeps as much of it as float16 holds (kept: input, weight, bias)
        tensors = (input, linear_weight, target, linear_bias, weight)  # in the op's order
        loss, grad_x, grad_w, grad_b, kept = run(
            linear_cross_entropy_op,
            *tensors,
            *options,
            None,  # no upstream gradient yet
            headroom,
            differentiated and reduction != "none",  # "none": backward computes them
        )
        ctx.has_bias, ctx.reduction, ctx.options = linear_bias is not None, reduction, options
        ctx.headroom = headroom
        if reduction == "none":  # backward runs the op again
            ctx.save_for_backward(*tensors)
        else:
            ctx.save_for_backward(grad_x, grad_w, grad_b, kept)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.reduction == "none":
            refuse_second_derivative()
            _, grad_x, grad_w, grad_b, _ = run(
                linear_cross_entropy_op,
                *ctx.saved_tensors,
                *ctx.options[:-1],
                False,  # the forward pass checked the class indices (or was told not to)
                grad_loss,
                1.0,
                True,
            )
        else:
            *grads, kept = ctx.saved_tensors
            if ctx.headroom == 1.0:  # none kept: nothing to divide out
                kept = (None,) * len(grads)
            pairs = zip(grads, kept, strict=True)
            grad_x, grad_w, grad_b = [scaled_by_kept(g, k, grad_loss) for g, k in pairs]
        return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None, None, None


# ----------------------------------------------------------------------- functions


@overridable
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    validate: bool | None = None,
) -> Tensor:
    r"""Softmax cross-entropy of ``input`` ``(N, C)`` against class indices ``(N,)`` or
    class probabilities ``(N, C)``, as ``torch.nn.functional.cross_entropy``; unbatched,
    ``input`` ``(C,)`` against a class index ``()`` or probabilities ``(C,)``, one row.

    .. math::
        \ell_i = -\sum_c a_c \log \mathrm{softmax}(z_i)_c, \qquad
        \frac{\partial \ell_i}{\partial z_{ic}} = \Big(\sum_k a_k\Big) p_{ic} - a_c

    with ``a`` the weighted, smoothed target (see ``gpukernels.softmax_cross_entropy``).
    The gradient is computed with the loss in one fused pass and saved; with
    ``inplace_backward=True`` it is written over ``input`` (no extra buffer), and ``input``
    is marked modified so that autograd raises if anything else still needs it. A mean
    over no row (every target ignored) is 0 with a zero gradient. ``z_loss`` adds
    ``z_loss * lse^2`` per non-ignored row and ``softcap`` caps the logits to
    ``softcap * tanh(z / softcap)`` first, in the same pass (see
    ``gpukernels.softmax_cross_entropy``). ``inplace_backward`` takes effect only where a
    backward pass can follow (grad mode on, ``input`` requiring grad): an evaluation loop
    keeps its logits; and not under ``torch.jit.trace``, which cannot record it.
    ``validate`` (class indices in range, else ``ValueError``) defaults to ``True`` on CPU
    tensors and ``False`` on CUDA ones, where the check would cost a device-to-host read
    every step (a bad index then gives its row a zero gradient and makes the loss NaN).
    ``size_average`` and ``reduce`` are PyTorch's deprecated arguments, which decide the
    reduction as they do in PyTorch.
    """
    tensors(input=input, target=target)
    optional_tensors(weight=weight)
    no_gradient_for("target", target)
    no_gradient_for("weight", weight)
    reduction = _legacy_reduction(size_average, reduce, reduction)
    # the custom op's schema takes Python ints and floats: checked here, with the library's
    # messages, before a bad value reaches it
    ignore, smoothing, factor, cap = _validate.cross_entropy_options(
        ignore_index, label_smoothing, z_loss, softcap
    )
    options = (ignore, reduction, smoothing, factor, cap, _checks_indices(input, validate))
    inplace = _validate.yes_no("inplace_backward", inplace_backward)
    # (torch.jit.trace cannot record an autograd function that modifies its input)
    inplace = inplace and _differentiated(input, target, weight) and not torch.jit.is_tracing()
    if input.ndim not in (1, 2):
        raise ValueError(
            f"input must be logits (N, C) or one unbatched row (C,), got shape "
            f"{tuple(input.shape)} (PyTorch's (N, C, d1, ...) is not taken: its class axis "
            "is not the last)"
        )
    unbatched = input.ndim == 1
    if unbatched:
        if inplace:
            raise ValueError(
                "inplace_backward=True needs a batch of logits (N, C): an unbatched input (C,) "
                "would be overwritten through a view, which autograd cannot mark modified "
                "(pass inplace_backward=False, or a batch that is not a view)"
            )
        input, target = _one_row(input, target)
    rows = batch_rows(input)
    if inplace:
        _overwritable(input)
        headroom = float16_headroom(input, reduction, rows)
        loss, _ = _FusedLossInPlace.apply(input, headroom, target, weight, options)
        return loss
    loss = _fused_loss(cross_entropy_op, input, target, weight, None, options, reduction, rows)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def _one_row(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """PyTorch's unbatched cross-entropy, logits ``(C,)`` against a class index ``()`` or
    class probabilities ``(C,)``, as a batch of one row. The target is checked here, where
    the messages can name the shapes passed rather than the batch's ``(1, C)``."""
    c = tuple(input.shape)
    if target.ndim == 0:
        if target.is_floating_point() or target.is_complex():
            raise TypeError(
                f"target: with an unbatched input of shape {c}, a 0-d target is a class index "
                f"and must be an integer tensor, got {target.dtype}"
            )
    elif tuple(target.shape) != c:
        hint = (
            " (for PyTorch's 1-element class index, pass target[0])" if target.numel() == 1 else ""
        )
        raise ValueError(
            f"target: an unbatched input of shape {c} takes a class index of shape () or class "
            f"probabilities of shape {c}, got shape {tuple(target.shape)}{hint}"
        )
    elif not target.is_floating_point():
        raise TypeError(
            f"target: a target of the unbatched input's shape {c} holds class probabilities "
            f"and must be a float tensor, got {target.dtype} (a class index is a 0-d tensor)"
        )
    return input.unsqueeze(0), target.unsqueeze(0)


def _differentiated(*arguments: Tensor | None) -> bool:
    """Whether a derivative can follow a loss of its tensor ``arguments`` (input, target,
    weights; ``None`` for one not given): a backward pass (grad mode, an argument requiring
    grad: the losses refuse one they do not differentiate before this), or forward-mode AD
    (a dual argument: the autograd function then refuses it, where the loss alone would drop
    its tangent silently; not checked while ``torch.compile`` traces)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in arguments):
        return True
    if torch.compiler.is_compiling():
        return False
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in arguments)


def _fused_loss(
    op, input, target, weight, pos_weight, options: tuple, reduction: str, count: int
) -> Tensor:
    """The loss of ``op`` (its options ``options``, before ``gradient`` and the gradient
    scale): through :class:`_FusedLoss` where a derivative can follow, with a float16 mean's
    headroom over ``count`` rows or elements; else the loss alone (no gradient computed or
    allocated, no headroom, and no autograd function: about 8 us a call). Always the former
    under ``torch.jit.trace``, whose graph would keep the choice for any input."""
    if _differentiated(input, target, weight, pos_weight) or torch.jit.is_tracing():
        headroom = float16_headroom(input, reduction, count)
        options = (*options, True)
        return _FusedLoss.apply(op, headroom, input, target, weight, pos_weight, options)
    tensors = (input, target, *weights_of(op, weight, pos_weight))
    return run(op, *tensors, *options, False, 1.0)[0]


def _checks_indices(input: Tensor, validate: bool | None) -> bool:
    """Whether a loss checks its class indices: ``validate`` if given, else on CPU tensors
    only (on a GPU the check waits for the device every step)."""
    if validate is None:
        return input.device.type == "cpu"
    return _validate.yes_no("validate", validate)


def _overwritable(input: Tensor) -> None:
    """``inplace_backward=True`` writes the gradient over ``input``: refused, before anything
    is written, for a leaf (a parameter: autograd forbids changing it in place) and for a view
    (autograd cannot mark a view modified and return the loss beside it)."""
    if input.is_leaf:
        raise RuntimeError(
            "cross_entropy(inplace_backward=True) would overwrite input, a leaf tensor that "
            "requires grad (autograd forbids that): pass the output of an operation, or use "
            "inplace_backward=False"
        )
    if input.retains_grad:
        raise RuntimeError(
            "cross_entropy(inplace_backward=True) cannot overwrite input, whose gradient is "
            "kept (retain_grad()): that gradient would be the one written over it; use "
            "inplace_backward=False"
        )
    if input._base is not None:
        raise RuntimeError(
            "cross_entropy(inplace_backward=True) cannot overwrite input, a view of another "
            "tensor (a reshape, a slice, a transpose, ...): pass the output of an operation "
            "itself (e.g. the logits of hidden states flattened before the output layer), or "
            "use inplace_backward=False"
        )


def _legacy_reduction(
    size_average: bool | None, reduce: bool | None, reduction: str, caller_level: int = 4
) -> str:
    """The reduction, decided as PyTorch decides it: by its deprecated ``size_average`` and
    ``reduce`` where either is given (``reduce=False``: ``"none"``; else ``size_average=False``:
    ``"sum"``; else ``"mean"``; with PyTorch's warning, which names the line
    ``caller_level`` frames up: the user's call of a loss, through ``overridable``), else by
    ``reduction``."""
    if size_average is None and reduce is None:
        return reduction
    for name, value in (("size_average", size_average), ("reduce", reduce)):
        if not _validate.is_flag(value):  # e.g. a reduction given where PyTorch has these
            raise TypeError(
                f"{name} must be None, a bool or an integer (PyTorch's deprecated argument, "
                f"before reduction in its argument order), got {type(value).__name__} {value!r}"
            )
    if reduce is not None and not reduce:
        reduction = "none"
    else:
        reduction = "mean" if size_average is None or size_average else "sum"
    if not torch.compiler.is_compiling():  # Dynamo cannot trace warnings.warn
        warnings.warn(
            f"size_average and reduce are deprecated (as in PyTorch): use reduction={reduction!r}",
            UserWarning,
            stacklevel=caller_level,
        )
    return reduction


@overridable
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    validate: bool | None = None,
) -> Tensor:
    r"""Cross-entropy of ``input @ linear_weight.T + linear_bias`` without holding the
    ``(N, V)`` logits (``torch.nn.functional.linear_cross_entropy``'s names): chunks of rows,
    the array library's matrix products, the fused kernel in place (see
    ``gpukernels.linear_cross_entropy``). Differentiable with respect to ``input``,
    ``linear_weight`` and ``linear_bias``; the weight gradient is accumulated in float32.
    ``validate`` as for :func:`cross_entropy` (by default CPU tensors' class indices are
    checked, CUDA tensors' are not)."""
    tensors(input=input, linear_weight=linear_weight, target=target)
    optional_tensors(linear_bias=linear_bias, weight=weight)
    no_gradient_for("target", target)
    no_gradient_for("weight", weight)
    options = (
        reduction,
        *_validate.cross_entropy_options(ignore_index, label_smoothing, z_loss, softcap),
        _validate.chunk_size(chunk_size),
        _checks_indices(input, validate),
    )
    differentiable = (input, linear_weight, linear_bias)
    if _differentiated(*differentiable, target, weight) or torch.jit.is_tracing():
        headroom = float16_headroom(input, reduction, batch_rows(input))
        return _LinearCrossEntropy.apply(*differentiable, target, weight, headroom, options)
    in_op_order = (input, linear_weight, target, linear_bias, weight)
    # the loss alone: no upstream gradient, no headroom, no gradients
    return run(linear_cross_entropy_op, *in_op_order, *options, None, 1.0, False)[0]


@overridable
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    r"""Binary cross-entropy on logits, as ``torch.nn.functional.
    binary_cross_entropy_with_logits``:
    :math:`\ell = w [(1 - y) z + l_w \log(1 + e^{-z})]`, :math:`l_w = 1 + (p_w - 1) y`,
    gradient :math:`w (l_w \sigma(z) - p_w y)`. ``size_average`` and ``reduce``: PyTorch's
    deprecated arguments, as in PyTorch."""
    tensors(input=input, target=target)
    optional_tensors(weight=weight, pos_weight=pos_weight)
    for name, value in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        no_gradient_for(name, value)
    reduction = _legacy_reduction(size_average, reduce, reduction)
    options = (reduction,)
    return _fused_loss(bce_op, input, target, weight, pos_weight, options, reduction, input.numel())


@overridable
def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Squared error :math:`(p - t)^2`, gradient :math:`2 (p - t)`, as
    ``torch.nn.functional.mse_loss`` (without its ``weight``). ``size_average`` and
    ``reduce``: PyTorch's deprecated arguments, as in PyTorch."""
    tensors(input=input, target=target)
    no_gradient_for("target", target)
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _fused_loss(mse_op, input, target, None, None, (reduction,), reduction, input.numel())


@overridable
def huber_loss(
    input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0
) -> Tensor:
    r"""Huber loss of :math:`d = p - t`: :math:`d^2 / 2` where :math:`|d| \le \delta`, else
    :math:`\delta (|d| - \delta / 2)`; gradient :math:`\mathrm{clip}(d, -\delta, \delta)`.
    As ``torch.nn.functional.huber_loss`` (without its ``weight``)."""
    tensors(input=input, target=target)
    no_gradient_for("target", target)
    delta = _validate.real_number("delta", delta)
    options = (reduction, delta)
    return _fused_loss(huber_op, input, target, None, None, options, reduction, input.numel())


@overridable
def composite_loss(
    pred: Tensor, target: Tensor, terms: Sequence[LossTerm], *, validate: bool | None = None
) -> Tensor:
    r"""Several loss terms on column slices of one output (``gpukernels.LossTerm``), each
    reduced by its own mean and weighted, their gradients summed in their columns: one
    fused kernel (see ``gpukernels.composite_loss``). ``validate`` as for
    :func:`cross_entropy`."""
    tensors(pred=pred, target=target)
    no_gradient_for("target", target)
    batches(pred, target)  # before their widths are read
    layout, factors = layout_of(terms, pred.shape[-1], target.shape[-1])
    check = _checks_indices(pred, validate)
    options = (layout, factors, check)
    # each term is a mean over the rows
    return _fused_loss(composite_op, pred, target, None, None, options, "mean", batch_rows(pred))


# ----------------------------------------------------------------------- modules


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on the fused kernel (see :func:`cross_entropy`)."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_backward: bool = False,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = _legacy_reduction(size_average, reduce, reduction, caller_level=3)
        self.label_smoothing, self.inplace_backward = label_smoothing, inplace_backward
        self.z_loss, self.softcap, self.validate = z_loss, softcap, validate

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace_backward=self.inplace_backward,
            validate=self.validate,
        )


class LinearCrossEntropyLoss(torch.nn.Module):
    """A fused output layer and its cross-entropy (see :func:`linear_cross_entropy`): call it
    with ``(input, linear_weight, target, linear_bias=None)``."""

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.chunk_size, self.validate = chunk_size, validate

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
    ) -> Tensor:
        return linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            validate=self.validate,
        )


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` on the fused kernel."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = _legacy_reduction(size_average, reduce, reduction, caller_level=3)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


class MSELoss(torch.nn.Module):
    """``torch.nn.MSELoss`` on the fused kernel."""

    def __init__(
        self, size_average: bool | None = None, reduce: bool | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.reduction = _legacy_reduction(size_average, reduce, reduction, caller_level=3)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)


class HuberLoss(torch.nn.Module):
    """``torch.nn.HuberLoss`` on the fused kernel."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__()
        self.reduction, self.delta = reduction, delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, self.reduction, self.delta)
