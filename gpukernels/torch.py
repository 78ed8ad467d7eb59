r"""PyTorch losses with autograd, on the fused kernels: ``gpukernels.torch``.

Each loss computes its gradient in the forward pass (one fused kernel over the input) and
saves it; ``backward`` only scales it by the upstream gradient (a scalar, or per row or
element for ``reduction="none"``), so a loss costs one pass over the logits. The kernels are
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

from collections.abc import Sequence

import torch

import gpukernels as _gk

from . import _validate
from ._composite_loss import LossTerm
from ._kinds import TermKind

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "HuberLoss",
    "MSELoss",
    "binary_cross_entropy_with_logits",
    "composite_loss",
    "cross_entropy",
    "huber_loss",
    "mse_loss",
]

Tensor = torch.Tensor


def _loss_like(input: Tensor, shape) -> Tensor:
    """An empty loss of ``shape``: float32 for 16-bit inputs, else the input's dtype."""
    dtype = torch.float32 if input.element_size() == 2 else input.dtype
    return input.new_empty(shape, dtype=dtype)


# ----------------------------------------------------------------------- the custom ops


@torch.library.custom_op("gpukernels::cross_entropy", mutates_args=())
def _cross_entropy_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor]:
    return _gk.softmax_cross_entropy(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


@_cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    shape = (input.shape[0],) if reduction == "none" else ()
    return _loss_like(input, shape), torch.empty_like(input)


@torch.library.custom_op("gpukernels::cross_entropy_inplace", mutates_args=("input",))
def _cross_entropy_inplace_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    loss, _ = _gk.softmax_cross_entropy(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        out=input,
    )
    return loss


@_cross_entropy_inplace_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return _loss_like(input, (input.shape[0],) if reduction == "none" else ())


@torch.library.custom_op("gpukernels::bce_with_logits", mutates_args=())
def _bce_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    return _gk.bce_with_logits(
        input, target, weight=weight, pos_weight=pos_weight, reduction=reduction
    )


@_bce_op.register_fake
def _(input, target, weight, pos_weight, reduction):
    return _elementwise_fake(input, reduction)


@torch.library.custom_op("gpukernels::mse", mutates_args=())
def _mse_op(input: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    return _gk.mse(input, target, reduction=reduction)


@_mse_op.register_fake
def _(input, target, reduction):
    return _elementwise_fake(input, reduction)


@torch.library.custom_op("gpukernels::huber", mutates_args=())
def _huber_op(input: Tensor, target: Tensor, reduction: str, delta: float) -> tuple[Tensor, Tensor]:
    return _gk.huber_loss(input, target, reduction=reduction, delta=delta)


@_huber_op.register_fake
def _(input, target, reduction, delta):
    return _elementwise_fake(input, reduction)


def _elementwise_fake(input, reduction):
    shape = tuple(input.shape) if reduction == "none" else ()
    return _loss_like(input, shape), torch.empty_like(input)


@torch.library.custom_op("gpukernels::composite", mutates_args=())
def _composite_op(
    pred: Tensor, target: Tensor, layout: list[int], factors: list[float]
) -> tuple[Tensor, Tensor]:
    return _gk.composite_loss(pred, target, _terms_from(layout, factors))


@_composite_op.register_fake
def _(pred, target, layout, factors):
    return _loss_like(pred, ()), torch.empty_like(pred)


def _layout_of(terms: Sequence[LossTerm], width: int, target_width: int):
    """``LossTerm``s as the flat lists a custom op can take (ints and floats)."""
    layout, factors = [], []
    for term in terms:
        if not isinstance(term, LossTerm):
            raise TypeError(f"terms must be a sequence of LossTerm, got {type(term).__name__}")
        columns = term.columns.indices(width) if isinstance(term.columns, slice) else None
        tsel = term.columns if term.target_columns is None else term.target_columns
        tcolumns = tsel.indices(target_width) if isinstance(tsel, slice) else None
        if columns is None or tcolumns is None or columns[2] != 1 or tcolumns[2] != 1:
            raise TypeError("terms: columns and target_columns must be slices with step 1")
        only = -1 if term.only_where is None else term.only_where
        layout += [TermKind.from_name(term.kind), *columns[:2], *tcolumns[:2], only]
        factors += [term.weight, term.delta]
    return layout, factors


def _terms_from(layout: list[int], factors: list[float]) -> list[LossTerm]:
    terms = []
    for k in range(len(layout) // 6):
        kind, c0, c1, t0, t1, only = layout[6 * k : 6 * k + 6]
        terms.append(
            LossTerm(
                TermKind(kind).label,
                slice(c0, c1),
                slice(t0, t1),
                weight=factors[2 * k],
                only_where=None if only < 0 else only,
                delta=factors[2 * k + 1],
            )
        )
    return terms


# ----------------------------------------------------------------------- autograd


def _scaled(grad: Tensor, grad_loss: Tensor, in_place: bool) -> Tensor:
    """``grad`` times the upstream gradient of the loss (a scalar, or one value per row or
    element of a ``"none"`` loss), in ``grad``'s dtype."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "gpukernels.torch losses are once differentiable: their gradient is computed in "
            "the forward pass and saved, so a second derivative (create_graph=True) is not "
            "available; use the torch.nn.functional loss for that"
        )
    scale = grad_loss.reshape(grad_loss.shape + (1,) * (grad.ndim - grad_loss.ndim))
    if in_place:
        return grad.mul_(scale)
    return (grad * scale).to(grad.dtype)


class _FusedLoss(torch.autograd.Function):
    """``op(input, *args) -> (loss, grad)``; backward scales the saved ``grad``."""

    @staticmethod
    def forward(ctx, op, input, *args):
        loss, grad = op(input, *args)
        ctx.save_for_backward(grad)
        ctx.num_args = len(args)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (None, _scaled(grad, grad_loss, in_place=False)) + (None,) * ctx.num_args


class _FusedLossInPlace(torch.autograd.Function):
    """Cross-entropy whose gradient replaces ``input``, which is marked modified."""

    @staticmethod
    def forward(ctx, input, *args):
        loss = _cross_entropy_inplace_op(input, *args)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        ctx.num_args = len(args)
        return loss, input

    @staticmethod
    def backward(ctx, grad_loss, _unused):
        (grad,) = ctx.saved_tensors
        return (_scaled(grad, grad_loss, in_place=True),) + (None,) * ctx.num_args


# ----------------------------------------------------------------------- functions


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
) -> Tensor:
    r"""Softmax cross-entropy of ``input`` ``(N, C)`` against class indices ``(N,)`` or
    class probabilities ``(N, C)``, as ``torch.nn.functional.cross_entropy``.

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
    ``gpukernels.softmax_cross_entropy``).
    """
    cap = None if softcap is None else float(softcap)
    args = (
        target,
        weight,
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        cap,
    )
    if inplace_backward:
        loss, _ = _FusedLossInPlace.apply(input, *args)
        return loss
    return _FusedLoss.apply(_cross_entropy_op, input, *args)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    r"""Binary cross-entropy on logits, as ``torch.nn.functional.
    binary_cross_entropy_with_logits``:
    :math:`\ell = w [(1 - y) z + l_w \log(1 + e^{-z})]`, :math:`l_w = 1 + (p_w - 1) y`,
    gradient :math:`w (l_w \sigma(z) - p_w y)`."""
    return _FusedLoss.apply(_bce_op, input, target, weight, pos_weight, reduction)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    r"""Squared error :math:`(p - t)^2`, gradient :math:`2 (p - t)`, as
    ``torch.nn.functional.mse_loss``."""
    return _FusedLoss.apply(_mse_op, input, target, reduction)


def huber_loss(
    input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0
) -> Tensor:
    r"""Huber loss of :math:`d = p - t`: :math:`d^2 / 2` where :math:`|d| \le \delta`, else
    :math:`\delta (|d| - \delta / 2)`; gradient :math:`\mathrm{clip}(d, -\delta, \delta)`.
    As ``torch.nn.functional.huber_loss``."""
    return _FusedLoss.apply(
        _huber_op, input, target, reduction, _validate.real_number("delta", delta)
    )


def composite_loss(pred: Tensor, target: Tensor, terms: Sequence[LossTerm]) -> Tensor:
    r"""Several loss terms on column slices of one output (``gpukernels.LossTerm``), each
    reduced by its own mean and weighted, their gradients summed in their columns: one
    fused kernel (see ``gpukernels.composite_loss``)."""
    if not isinstance(terms, Sequence) or isinstance(terms, LossTerm | str):
        raise TypeError(f"terms must be a sequence of LossTerm, got {type(terms).__name__}")
    layout, factors = _layout_of(terms, pred.shape[-1], target.shape[-1])
    return _FusedLoss.apply(_composite_op, pred, target, layout, factors)


# ----------------------------------------------------------------------- modules


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on the fused kernel (see :func:`cross_entropy`)."""

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.inplace_backward = label_smoothing, inplace_backward
        self.z_loss, self.softcap = z_loss, softcap

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace_backward=self.inplace_backward,
        )


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` on the fused kernel."""

    def __init__(
        self,
        weight: Tensor | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, self.reduction, self.pos_weight
        )


class MSELoss(torch.nn.Module):
    """``torch.nn.MSELoss`` on the fused kernel."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, self.reduction)


class HuberLoss(torch.nn.Module):
    """``torch.nn.HuberLoss`` on the fused kernel."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__()
        self.reduction, self.delta = reduction, delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, self.reduction, self.delta)
