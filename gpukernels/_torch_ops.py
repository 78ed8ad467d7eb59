"""The fused kernels registered as PyTorch custom ops (``torch.ops.gpukernels.*``).

Each op runs the array-level function on the tensors (zero-copy) and returns the loss and
the gradients it computed; a fake implementation gives ``torch.compile`` the shapes and
dtypes without running it. Eager calls skip the dispatcher (:func:`run`).
``gpukernels.torch`` builds the autograd losses on them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import torch
from torch.overrides import handle_torch_function, has_torch_function

import gpukernels as _gk
from gpukernels._linear_cross_entropy import fit_headroom, headroom_linear_cross_entropy

from . import _validate
from ._composite_loss import LossTerm
from ._kinds import TermKind

Tensor = torch.Tensor
_EAGER: dict = {}  # custom op -> the Python function it wraps
_INPUT_NAMES: dict = {}  # custom op -> what the array-level function calls the input
_WEIGHTS: dict = {}  # custom op -> how many of (weight, pos_weight) follow its target


def _custom_op(name: str, mutates_args: tuple, input_names: tuple[str, ...] = (), weights: int = 0):
    """Register the decorated function as the custom op ``name`` and remember the function:
    :func:`run` calls it directly where nothing records the call, as going through the
    dispatcher would add about 100 us to every call. ``input_names``: the names the
    array-level function's messages give the loss's ``input`` (``logits``, and ``out``
    where the gradient is written over it). ``weights``: how many of the tensors ``weight``
    and ``pos_weight`` the op takes after its ``target`` (:func:`weights_of`)."""

    def register(fn):
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        _EAGER[op] = fn
        _WEIGHTS[op] = weights
        if input_names:
            _INPUT_NAMES[op] = input_names
        return op

    return register


def weights_of(op, weight: Tensor | None, pos_weight: Tensor | None) -> tuple:
    """The weight tensors ``op`` takes after its target, of ``weight`` and ``pos_weight``."""
    return (weight, pos_weight)[: _WEIGHTS[op]]


def run(op, *args):
    """``op(*args)``: through PyTorch's dispatcher where :func:`_recorded` says so, else the
    wrapped function itself. An argument error whose message names the input as the
    array-level function does (``logits``, ``pred``, ``out``) gets a note that this is the
    loss's ``input``."""
    try:
        if _recorded(args[0]):
            return op(*args)
        return _EAGER[op](*args)
    except (TypeError, ValueError) as error:
        named = [n for n in _INPUT_NAMES.get(op, ()) if re.search(rf"\b{n}\b", str(error))]
        if named:
            error.add_note(f"({' and '.join(named)}: the loss's input)")
        raise


_VIEWABLE = (Tensor, torch.nn.Parameter)  # the tensor types the array views read


def _recorded(input: Tensor) -> bool:
    """Whether a call goes through PyTorch's dispatcher: while ``torch.compile`` or
    ``torch.jit.trace`` records it (the op is then one node of the graph), and for a tensor
    subclass, which the array views cannot read (a ``FakeTensor`` of shape propagation: the
    op's fake implementation answers it)."""
    return type(input) not in _VIEWABLE or torch.compiler.is_compiling() or torch.jit.is_tracing()


def _loss_like(input: Tensor, shape) -> Tensor:
    """An empty loss of ``shape``: float32 for 16-bit inputs, else the input's dtype."""
    dtype = torch.float32 if input.element_size() == 2 else input.dtype
    return input.new_empty(shape, dtype=dtype)


def _or_empty(loss: Tensor, grad: Tensor | None, input: Tensor) -> tuple[Tensor, Tensor]:
    """A custom op's results: it returns tensors only, so no gradient (``gradient=False``)
    is an empty one."""
    return loss, input.new_empty(0) if grad is None else grad


def _results_like(input: Tensor, loss_shape, gradient: bool) -> tuple[Tensor, Tensor]:
    """A loss op's fake results: an empty loss of ``loss_shape`` and a gradient like
    ``input`` (an empty one without ``gradient``, as :func:`_or_empty`)."""
    return _loss_like(input, loss_shape), input.new_empty(input.shape if gradient else 0)


@_custom_op("gpukernels::cross_entropy", (), input_names=("logits",), weights=1)
def cross_entropy_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    validate: bool,
    gradient: bool,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    args = (ignore_index, reduction, label_smoothing, z_loss, softcap, validate, grad_scale)
    return _or_empty(*_softmax_xent(input, target, weight, *args, gradient=gradient), input)


def _softmax_xent(
    input,
    target,
    weight,
    ignore_index,
    reduction,
    smoothing,
    z_loss,
    cap,
    validate,
    scale,
    out=None,
    gradient=True,
):
    """``gk.softmax_cross_entropy`` with the ops' positional arguments."""
    return _gk.softmax_cross_entropy(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=smoothing,
        z_loss=z_loss,
        softcap=cap,
        validate=validate,
        grad_output=as_grad_output(scale),
        out=out,
        gradient=gradient,
    )


@cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, reduction, *rest):
    return _results_like(input, (input.shape[0],) if reduction == "none" else (), rest[-2])


@_custom_op("gpukernels::cross_entropy_inplace", ("input",), input_names=("logits", "out"))
def cross_entropy_inplace_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    validate: bool,
    grad_scale: float,
) -> Tensor:
    args = (ignore_index, reduction, label_smoothing, z_loss, softcap, validate, grad_scale)
    return _softmax_xent(input, target, weight, *args, out=input)[0]


@cross_entropy_inplace_op.register_fake
def _(input, target, weight, ignore_index, reduction, *rest):
    return _loss_like(input, (input.shape[0],) if reduction == "none" else ())


@_custom_op("gpukernels::bce_with_logits", (), input_names=("logits",), weights=2)
def bce_op(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    gradient: bool,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    results = _gk.bce_with_logits(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        reduction=reduction,
        grad_output=as_grad_output(grad_scale),
        gradient=gradient,
    )
    return _or_empty(*results, input)


@bce_op.register_fake
def _(input, target, weight, pos_weight, reduction, gradient, grad_scale):
    return _elementwise_fake(input, reduction, gradient)


@_custom_op("gpukernels::mse", (), input_names=("pred",))
def mse_op(
    input: Tensor, target: Tensor, reduction: str, gradient: bool, grad_scale: float
) -> tuple[Tensor, Tensor]:
    scale = as_grad_output(grad_scale)
    results = _gk.mse(input, target, reduction=reduction, grad_output=scale, gradient=gradient)
    return _or_empty(*results, input)


@mse_op.register_fake
def _(input, target, reduction, gradient, grad_scale):
    return _elementwise_fake(input, reduction, gradient)


@_custom_op("gpukernels::huber", (), input_names=("pred",))
def huber_op(
    input: Tensor, target: Tensor, reduction: str, delta: float, gradient: bool, grad_scale: float
) -> tuple[Tensor, Tensor]:
    results = _gk.huber_loss(
        input,
        target,
        reduction=reduction,
        delta=delta,
        grad_output=as_grad_output(grad_scale),
        gradient=gradient,
    )
    return _or_empty(*results, input)


@huber_op.register_fake
def _(input, target, reduction, delta, gradient, grad_scale):
    return _elementwise_fake(input, reduction, gradient)


@_custom_op("gpukernels::linear_cross_entropy", ())
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
    chunk_size: int | None,
    validate: bool,
    grad_output: Tensor | None,
    headroom: float,
    gradients: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss, grad_x, grad_w, grad_b, kept = headroom_linear_cross_entropy(
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
        headroom=headroom,
        gradients=gradients,
    )
    # a custom op returns tensors only: a gradient not computed (no bias; gradients=False)
    # is an empty one; kept: the headroom the input, weight and bias gradients kept
    grads = [input.new_empty(0) if g is None else g for g in (grad_x, grad_w, grad_b)]
    return loss, *grads, kept


@linear_cross_entropy_op.register_fake
def _(input, linear_weight, target, linear_bias, weight, reduction, *rest):
    gradients = rest[-1]
    shape = (input.shape[0],) if reduction == "none" else ()
    like = [input, linear_weight, linear_bias]
    if not gradients:
        like = [None] * 3
    grads = [input.new_empty(0) if t is None else t.new_empty(t.shape) for t in like]
    return _loss_like(input, shape), *grads, _loss_like(input, (3,))


def as_grad_output(grad_scale: float) -> float | None:
    """A gradient scale as the array-level ``grad_output``: none for 1 (nothing to scale)."""
    return None if grad_scale == 1.0 else grad_scale


def _elementwise_fake(input, reduction, gradient):
    return _results_like(input, tuple(input.shape) if reduction == "none" else (), gradient)


@_custom_op("gpukernels::composite", ())
def composite_op(
    pred: Tensor,
    target: Tensor,
    layout: list[int],
    factors: list[float],
    validate: bool,
    gradient: bool,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    results = _gk.composite_loss(
        pred,
        target,
        _terms_from(layout, factors),
        validate=validate,
        grad_output=as_grad_output(grad_scale),
        gradient=gradient,
    )
    return _or_empty(*results, pred)


@composite_op.register_fake
def _(pred, target, layout, factors, validate, gradient, grad_scale):
    return _results_like(pred, (), gradient)


def layout_of(terms: Sequence[LossTerm], width: int, target_width: int):
    """``LossTerm``s, validated as ``composite_loss`` validates them, as the flat lists a
    custom op can take: per term six ints (kind, columns, target columns, ``only_where``)
    and four floats (weight, delta, z-loss factor, softcap; 0 for no cap)."""
    layout, factors = [], []
    for term in _validate.loss_terms(terms, width, target_width):
        layout += [int(term.kind), *term.columns, *term.target_columns, term.only_where]
        factors += [term.weight, term.delta, term.z_loss, term.softcap]
    return layout, factors


def _terms_from(layout: list[int], factors: list[float]) -> list[LossTerm]:
    terms = []
    for k in range(len(layout) // 6):
        kind, c0, c1, t0, t1, only = layout[6 * k : 6 * k + 6]
        weight, delta, z_loss, softcap = factors[4 * k : 4 * k + 4]
        terms.append(
            LossTerm(
                TermKind(kind).label,
                slice(c0, c1),
                slice(t0, t1),
                weight=weight,
                only_where=None if only < 0 else only,
                delta=delta,
                z_loss=z_loss,
                softcap=softcap or None,
            )
        )
    return terms


# ----------------------------------------------------------------------- argument checks


def overridable(loss):
    """``loss`` open to ``__torch_function__``, as ``torch.nn.functional``'s losses are: an
    argument that defines it takes the call over (``torch.fx``'s ``Proxy`` while
    ``symbolic_trace`` records a model, a tensor subclass that overrides it)."""

    @functools.wraps(loss)
    def overridable_loss(*args, **kwargs):
        arguments = args + tuple(kwargs.values()) if kwargs else args
        if has_torch_function(arguments):
            return handle_torch_function(overridable_loss, arguments, *args, **kwargs)
        return loss(*args, **kwargs)

    return overridable_loss


def tensors(**arguments) -> None:
    """The losses take tensors; arrays belong to the array-level ``gpukernels`` functions."""
    for name, value in arguments.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(value).__name__} (the functions of "
                "gpukernels itself take NumPy and CuPy arrays)"
            )


def optional_tensors(**arguments) -> None:
    """:func:`tensors` for arguments that may also be ``None``."""
    tensors(**{name: value for name, value in arguments.items() if value is not None})


def no_gradient_for(name: str, value) -> None:
    """The losses differentiate their input only: a ``name`` tensor that requires grad would
    silently get none, so it is refused."""
    if isinstance(value, Tensor) and value.requires_grad:
        raise RuntimeError(
            f"gpukernels.torch does not differentiate with respect to {name}: pass "
            f"{name}.detach(), or use the torch.nn.functional loss"
        )


# ----------------------------------------------------------------------- autograd helpers


def refuse_second_derivative() -> None:
    """Backward runs with grad mode on only under ``create_graph=True``: refuse it."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "gpukernels.torch losses are once differentiable: their gradient is computed in "
            "the forward pass and saved, so backward cannot be differentiated "
            "(create_graph=True: a second derivative, or torch.autograd.functional.jvp and "
            "hvp, which differentiate backward); use the torch.nn.functional loss for that"
        )


def unit(grad_loss: Tensor) -> bool:
    """Whether the upstream gradient is known to be exactly 1 (``loss.backward()``): read on
    the CPU only, where it costs nothing (on a GPU it would wait for the device), and never
    while ``torch.compile`` traces (a graph cannot branch on a value). A batch of upstream
    gradients under ``vmap`` (``jacobian(..., vectorize=True)``, ``is_grads_batched``) has
    no one value to read: not known to be 1."""
    if torch.compiler.is_compiling() or grad_loss.device.type != "cpu" or grad_loss.numel() != 1:
        return False
    try:
        return grad_loss.item() == 1
    except RuntimeError:  # vmap's "Batching rule not implemented for aten::item"
        return False


def batch_rows(input: Tensor) -> int:
    """The rows of a batch, for :func:`float16_headroom`: the first dimension's length, 0
    for a 0-d tensor (which the array-level function then refuses, naming it)."""
    return input.shape[0] if input.ndim else 0


def float16_headroom(input: Tensor, reduction: str, count: int) -> float:
    """The power of two a float16 mean's gradient is computed multiplied by, and divided by
    again in backward, together with the upstream gradient; 1 elsewhere.

    A mean over ``count`` rows (or elements) has gradients of the order of 1 / ``count``,
    which float16 (smallest normal 6.1e-5) stores with few bits or as 0 from a few thousand
    rows on. Rounded in the forward pass, they are lost before backward can multiply them by
    the upstream gradient: a loss scale (``torch.amp.GradScaler``) of 2^14 would scale up
    zeros. Computed times ``2^floor(log2 count)`` (at most 2^15), they stay within the sum's
    gradients, which float16 holds, and are rounded again only with the upstream gradient
    applied, as PyTorch's float16 backward rounds them.

    Found by comparisons, not ``count.bit_length()``: under ``torch.compile`` a dynamic
    batch size then gets range guards (a graph per power of two) rather than its value.
    """
    if input.dtype is not torch.float16 or reduction != "mean":
        return 1.0
    for power in range(15, 0, -1):
        if count >= 1 << power:
            return float(1 << power)
    return 1.0


def scaled(
    grad: Tensor, grad_loss: Tensor, in_place: bool, one: bool | None = None, headroom: float = 1.0
) -> Tensor:
    """``grad`` times the upstream gradient of the loss (a scalar, or one value per row or
    element of a ``"none"`` loss) over ``headroom`` (the power of two the forward pass kept a
    float16 mean's gradient multiplied by), in ``grad``'s dtype; ``grad`` itself where there
    is no headroom and the upstream gradient is :func:`unit` (a pass over it saved), or where
    ``one`` says so (the caller has asked :func:`unit` already)."""
    refuse_second_derivative()
    if headroom == 1.0 and (unit(grad_loss) if one is None else one):
        return grad
    scale = grad_loss.reshape(grad_loss.shape + (1,) * (grad.ndim - grad_loss.ndim))
    if headroom != 1.0:
        scale = scale / headroom  # a power of two: exact
    if in_place:
        return grad.mul_(scale)
    return (grad * scale).to(grad.dtype)


def fit_to_float16(grad: Tensor, headroom: float) -> tuple[Tensor, Tensor]:
    """A float32 gradient computed times ``headroom`` (see :func:`float16_headroom`) as
    float16: divided first by as much of the headroom as float16 needs to hold every entry
    (``fit_headroom``); with the headroom it keeps, a 0-d tensor (nothing read back)."""
    kept = fit_headroom(torch, grad, headroom)
    return grad.to(torch.float16), kept


def scaled_by_kept(grad: Tensor, kept: Tensor | None, grad_loss: Tensor) -> Tensor:
    """:func:`scaled` of a gradient that kept the headroom ``kept`` (:func:`fit_to_float16`;
    ``None``: none), divided out on the device."""
    if kept is None:
        return scaled(grad, grad_loss, in_place=False)
    return scaled(grad, grad_loss / kept, in_place=False, one=False)
