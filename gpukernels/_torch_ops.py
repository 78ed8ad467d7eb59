"""The fused kernels registered as PyTorch custom ops (``torch.ops.gpukernels.*``).

Each op runs the array-level function on the tensors (zero-copy) and returns the loss and
the gradients it computed; a fake implementation gives ``torch.compile`` the shapes and
dtypes without running it. ``gpukernels.torch`` builds the autograd losses on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import gpukernels as _gk

from ._composite_loss import LossTerm
from ._kinds import TermKind

Tensor = torch.Tensor


def _loss_like(input: Tensor, shape) -> Tensor:
    """An empty loss of ``shape``: float32 for 16-bit inputs, else the input's dtype."""
    dtype = torch.float32 if input.element_size() == 2 else input.dtype
    return input.new_empty(shape, dtype=dtype)


@torch.library.custom_op("gpukernels::cross_entropy", mutates_args=())
def cross_entropy_op(
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


@cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    shape = (input.shape[0],) if reduction == "none" else ()
    return _loss_like(input, shape), torch.empty_like(input)


@torch.library.custom_op("gpukernels::cross_entropy_inplace", mutates_args=("input",))
def cross_entropy_inplace_op(
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


@cross_entropy_inplace_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    return _loss_like(input, (input.shape[0],) if reduction == "none" else ())


@torch.library.custom_op("gpukernels::bce_with_logits", mutates_args=())
def bce_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    return _gk.bce_with_logits(
        input, target, weight=weight, pos_weight=pos_weight, reduction=reduction
    )


@bce_op.register_fake
def _(input, target, weight, pos_weight, reduction):
    return _elementwise_fake(input, reduction)


@torch.library.custom_op("gpukernels::mse", mutates_args=())
def mse_op(input: Tensor, target: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    return _gk.mse(input, target, reduction=reduction)


@mse_op.register_fake
def _(input, target, reduction):
    return _elementwise_fake(input, reduction)


@torch.library.custom_op("gpukernels::huber", mutates_args=())
def huber_op(input: Tensor, target: Tensor, reduction: str, delta: float) -> tuple[Tensor, Tensor]:
    return _gk.huber_loss(input, target, reduction=reduction, delta=delta)


@huber_op.register_fake
def _(input, target, reduction, delta):
    return _elementwise_fake(input, reduction)


@torch.library.custom_op("gpukernels::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad_output: Tensor | None,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, grad_x, grad_w, grad_b = _gk.linear_cross_entropy(
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
    )
    # a custom op returns tensors only: no bias, no bias gradient (an empty one)
    return loss, grad_x, grad_w, input.new_empty(0) if grad_b is None else grad_b


@linear_cross_entropy_op.register_fake
def _(input, linear_weight, target, linear_bias, weight, reduction, *rest):
    shape = (input.shape[0],) if reduction == "none" else ()
    grad_b = input.new_empty(0) if linear_bias is None else torch.empty_like(linear_bias)
    return (
        _loss_like(input, shape),
        torch.empty_like(input),
        torch.empty_like(linear_weight),
        grad_b,
    )


def _elementwise_fake(input, reduction):
    shape = tuple(input.shape) if reduction == "none" else ()
    return _loss_like(input, shape), torch.empty_like(input)


@torch.library.custom_op("gpukernels::composite", mutates_args=())
def composite_op(
    pred: Tensor, target: Tensor, layout: list[int], factors: list[float]
) -> tuple[Tensor, Tensor]:
    return _gk.composite_loss(pred, target, _terms_from(layout, factors))


@composite_op.register_fake
def _(pred, target, layout, factors):
    return _loss_like(pred, ()), torch.empty_like(pred)


def layout_of(terms: Sequence[LossTerm], width: int, target_width: int):
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
